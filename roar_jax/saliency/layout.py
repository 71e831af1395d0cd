"""Where a batch lives: its split over devices, per-device chunks, host passes.

A batch sharded over a mesh axis is explained with `shard_map`: each device
explains its own rows, with no communication, and the maps come back sharded
like the images. These helpers cut every device's rows into fixed-shape
chunks (the last one padded, so nothing recompiles), put arrays where the
jitted calls want them, and run host functions (segmentation) on the rows a
process holds.
"""

import dataclasses
import functools
import math
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


@dataclasses.dataclass(frozen=True)
class Layout:
  """How the batch axis is split: `shards` row blocks, one per device."""
  shards: int
  mesh: Optional[Mesh] = None
  axis: Any = None  # Mesh axis name(s) of the batch dimension.

  def spec(self, batched: bool) -> P:
    return P(self.axis) if batched and self.mesh is not None else P()

  def sharding(self, batched: bool):
    if self.mesh is None:
      return None
    return NamedSharding(self.mesh, self.spec(batched))


def layout_of(images) -> Layout:
  sharding = getattr(images, "sharding", None)
  if isinstance(sharding, NamedSharding) and len(sharding.spec) > 0:
    axis = sharding.spec[0]
    if axis is not None:
      names = axis if isinstance(axis, tuple) else (axis,)
      shards = math.prod(sharding.mesh.shape[n] for n in names)
      if shards > 1:
        return Layout(shards, sharding.mesh, axis)
  return Layout(1)


def per_device(fn, layout: Layout, batched: Sequence[bool]):
  """fn on each device's rows (shard_map), or fn itself on one device."""
  if layout.mesh is None:
    return fn
  return jax.shard_map(fn, mesh=layout.mesh,
                       in_specs=tuple(layout.spec(b) for b in batched),
                       out_specs=layout.spec(True), check_vma=False)


@functools.lru_cache(maxsize=None)
def prepare_fn(layout: Layout, padded: int):
  """[B, ...] -> [shards, padded, ...]: each device's rows, zero-padded."""
  def prepare(x):
    x = x.reshape((layout.shards, x.shape[0] // layout.shards) + x.shape[1:])
    pad = [(0, 0)] * x.ndim
    pad[1] = (0, padded - x.shape[1])
    return jnp.pad(x, pad)
  return jax.jit(prepare, out_shardings=layout.sharding(True))


def take(a, s, chunk):
  """Chunk s of every device's rows: [shards, L, ...] -> [shards * c, ...]."""
  a = jax.lax.dynamic_slice_in_dim(a, s * chunk, chunk, 1)
  return a.reshape((-1,) + a.shape[2:])


@functools.lru_cache(maxsize=None)
def assemble_fn(layout: Layout, chunk: int, rows: int):
  """Chunks [shards * c] -> maps [B]: regrouped per device, padding dropped."""
  def assemble(chunks):
    x = jnp.concatenate(
        [c.reshape((layout.shards, chunk) + c.shape[1:]) for c in chunks],
        axis=1)[:, :rows]
    return x.reshape((layout.shards * rows,) + x.shape[2:])
  return jax.jit(assemble, out_shardings=layout.sharding(True))


@functools.lru_cache(maxsize=None)
def broadcast_fn(layout: Layout, shape: tuple[int, ...]):
  """One array broadcast to `shape` [B, ...], sharded like the images."""
  return jax.jit(lambda a: jnp.broadcast_to(a, shape).astype(jnp.float32),
                 out_shardings=layout.sharding(True))


def batched(x, layout: Layout):
  """x [B, ...] sharded like the images (a no-op when it already is)."""
  if layout.mesh is None:
    return jnp.asarray(x)
  return jax.device_put(x, layout.sharding(True))


def replicated(tree, layout: Layout):
  """Every leaf on every device of the mesh (a no-op when it already is).

  Leaves that live on one local device are copied through the host when
  several processes run, since a process can only place its own shards.
  """
  if layout.mesh is None:
    return tree
  target = layout.sharding(False)

  def put(leaf):
    if isinstance(leaf, jax.Array):
      if leaf.sharding.is_equivalent_to(target, leaf.ndim) or (
          not leaf.is_fully_addressable):
        return leaf
      if jax.process_count() > 1:
        leaf = np.asarray(leaf)
    return jax.device_put(leaf, target)

  return jax.tree.map(put, tree)


def host_map(fn: Callable[[np.ndarray, slice], dict], images,
             layout: Layout) -> dict:
  """fn(rows of the images as numpy, their slice) on the host, per process.

  A fully addressable batch is passed whole; otherwise every distinct row
  block this process holds is passed on its own. fn returns {name: numpy
  [rows, ...]}; the results are global arrays sharded like the images.
  """
  if not isinstance(images, jax.Array) or images.is_fully_addressable:
    out = fn(np.asarray(images), slice(0, images.shape[0]))
    return {k: batched(v, layout) for k, v in out.items()}
  blocks = {}
  for shard in images.addressable_shards:
    rows = shard.index[0]
    key = (rows.start or 0, rows.stop)
    if key not in blocks:
      blocks[key] = fn(np.asarray(shard.data), slice(*key))
  first = next(iter(blocks.values()))
  batch = images.shape[0]

  def build(name):
    value = first[name]
    return jax.make_array_from_callback(
        (batch,) + value.shape[1:], layout.sharding(True),
        lambda index: blocks[(index[0].start or 0, index[0].stop)][name])

  return {name: build(name) for name in first}


def key_parts(key) -> tuple[Any, Optional[str]]:
  """(key data, implementation name): plain arrays that any process can place.

  A legacy raw uint32 key has no implementation name.
  """
  if not isinstance(key, jax.Array) and not isinstance(key, np.ndarray):
    raise ValueError(f"key must be a PRNG key (jax.random.key(seed)), got "
                     f"{type(key).__name__}")
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.shape:
      raise ValueError(f"key must be a single PRNG key, got shape {key.shape}")
    data = jax.random.key_data(key)
    return (np.asarray(data) if data.is_fully_addressable else data,
            str(jax.random.key_impl(key)))
  return key, None


def make_key(data, impl: Optional[str]):
  return data if impl is None else jax.random.wrap_key_data(data, impl=impl)
