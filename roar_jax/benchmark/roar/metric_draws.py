"""Seeded draws and chunked calls shared by the perturbation metrics.

Infidelity, sensitivity and faithfulness correlation score a map against
random perturbations of its image. Sample s of image i is drawn from
`fold_in(fold_in(fold_in(key(seed), stream), index_i), s)`: a pure function
of the run's seed, the metric's stream, the image's index in the test split
and the sample's number, so a value does not depend on the batch, the
chunking or the number of processes.

The values of a sample's key are Threefry-2x32 bits in the layout of
`jax.random.bits` (jax_threefry_partitionable, JAX's default): word j is
`t0 ^ t1` of Threefry(key, (0, j)); `uniform` and `normal` turn them into
floats as `jax.random.uniform` and `jax.random.normal` do, and give their
values. They are computed here, unrolled, because JAX's CPU lowering of
Threefry runs its 20 rounds as a rolled loop, several times slower than the
fused rounds: on CPU the draws cost as much as a third of a small CNN's
forwards.

Each metric scores `per_image` model inputs per image (its samples, and the
clean image where it needs f(x)). The calls take them in the image-major
order, `batch_size` inputs at a time (the last call padded), so the forwards
run in batches of the model's efficient size whatever the samples per image;
one compilation serves every call.
"""

from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

# The metrics' key streams: distinct from the explain stage's (7) and the
# metric maps' (11).
INFIDELITY_STREAM = 21
SENSITIVITY_STREAM = 22
FAITHFULNESS_STREAM = 23

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def image_keys(seed: int, stream: int, indices) -> jax.Array:
  """[B] keys: image i's is fold_in(fold_in(key(seed), stream), index_i)."""
  base = jax.random.fold_in(jax.random.key(seed), stream)
  idx = jnp.asarray(np.asarray(indices, np.int64).reshape(-1) % (2**32),
                    jnp.uint32)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(idx)


def sample_keys(keys: jax.Array, samples: jax.Array) -> jax.Array:
  """[b] image keys, [m] sample numbers -> [b, m] keys (traceable)."""
  return jax.vmap(lambda k: jax.vmap(
      lambda s: jax.random.fold_in(k, s))(samples))(keys)


def input_keys(keys: jax.Array, local: jax.Array, slot: jax.Array
               ) -> jax.Array:
  """A call's per-input sample keys [p] (traceable): input p is sample
  slot_p of image local_p, its key fold_in(keys[local_p], slot_p)."""
  return jax.vmap(jax.random.fold_in)(keys[local], slot)


def _threefry(k0, k1, x0, x1):
  """Threefry-2x32 (20 rounds) of the counters (x0, x1) under (k0, k1)."""
  ks = (k0, k1, k0 ^ k1 ^ jnp.uint32(0x1BD11BDA))
  x0, x1 = x0 + ks[0], x1 + ks[1]
  for i in range(5):
    for r in _ROTATIONS[i % 2]:
      x0 = x0 + x1
      x1 = ((x1 << jnp.uint32(r)) | (x1 >> jnp.uint32(32 - r))) ^ x0
    x0 = x0 + ks[(i + 1) % 3]
    x1 = x1 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
  return x0, x1


def bits(keys: jax.Array, n: int) -> jax.Array:
  """[...] keys -> [..., n] uint32: `jax.random.bits(key, (n,))` of each."""
  data = jax.random.key_data(keys)
  counts = jnp.arange(n, dtype=jnp.uint32)
  t0, t1 = _threefry(data[..., :1], data[..., 1:], jnp.zeros_like(counts),
                     counts)
  return t0 ^ t1


def uniform(keys: jax.Array, n: int, minval=0.0, maxval=1.0) -> jax.Array:
  """[...] keys -> [..., n] float32: `jax.random.uniform(key, (n,),
  minval=minval, maxval=maxval)` of each."""
  mantissa = (bits(keys, n) >> jnp.uint32(9)) | jnp.uint32(0x3F800000)
  floats = jax.lax.bitcast_convert_type(mantissa, jnp.float32) - 1.0
  minval, maxval = jnp.float32(minval), jnp.float32(maxval)
  return jnp.maximum(minval, floats * (maxval - minval) + minval)


def normal(keys: jax.Array, n: int) -> jax.Array:
  """[...] keys -> [..., n] float32: `jax.random.normal(key, (n,))`."""
  low = np.nextafter(np.float32(-1.0), np.float32(0.0))
  u = uniform(keys, n, low, 1.0)
  return np.float32(np.sqrt(2)) * jax.lax.erf_inv(u)


def as_partial(fn: Callable) -> jax.tree_util.Partial:
  """A logits function as a jit argument (its bound weights traced, not
  baked into the compiled program as constants)."""
  if isinstance(fn, jax.tree_util.Partial):
    return fn
  return jax.tree_util.Partial(fn)


def chunks(num_images: int, per_image: int, batch_size: int
           ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
  """The calls that cover the `num_images * per_image` inputs, image-major.

  Yields:
    (rows [u]: the positions of the images the call touches, the last one
     repeated to pad; local [p]: each input's image as a position in rows;
     slot [p]: each input's number within its image; inputs kept).
    u and p are the same for every call.
  """
  total = num_images * per_image
  size = max(1, min(batch_size, total))
  span = min((size - 1) // per_image + 2, num_images)
  for start in range(0, total, size):
    flat = np.minimum(np.arange(start, start + size), total - 1)
    image = flat // per_image
    first = int(image[0])
    rows = np.minimum(np.arange(first, first + span), num_images - 1)
    yield (rows, (image - first).astype(np.int32),
           (flat % per_image).astype(np.uint32), min(size, total - start))


def per_input(kernel: Callable[..., jax.Array], arrays, keys: jax.Array,
              per_image: int, batch_size: int) -> np.ndarray:
  """Runs `kernel(*row_arrays, row_keys, local, slot) -> [p, ...]` over
  every chunk of `chunks`; returns the values [B, per_image, ...] (float64).

  Args:
    kernel: a function of the call's rows of `arrays` [u, ...], their keys
      [u], and each input's row [p] and number within its image [p].
    arrays: per-image numpy arrays [B, ...].
    keys: [B] image keys (`image_keys`).
    per_image: model inputs per image.
    batch_size: model inputs per call at most.
  """
  n = int(keys.shape[0])
  if n == 0:
    raise ValueError("no images to score")
  # Every call is dispatched before any result is read: the host's work for
  # a call (its gathers, its dispatch) overlaps the device's on the last.
  values = [(kernel(*[a[rows] for a in arrays], keys[rows], local, slot),
             kept) for rows, local, slot, kept in chunks(n, per_image,
                                                         batch_size)]
  out = np.concatenate([np.asarray(v, np.float64)[:kept]
                        for v, kept in values])
  return out.reshape((n, per_image) + out.shape[1:])


def per_input_with_clean(kernel: Callable[..., jax.Array], arrays,
                         keys: jax.Array, samples: int, batch_size: int
                         ) -> np.ndarray:
  """`per_input` of a kernel whose slot 0 is the clean image and slot s its
  sample s - 1, each input giving (term, f(input)).

  Returns:
    [B, samples, 2] float64: (term, f(x) - f(sample)) per sample.
  """
  v = per_input(kernel, arrays, keys, samples + 1, batch_size)
  return np.stack([v[:, 1:, 0], v[:, :1, 1] - v[:, 1:, 1]], axis=-1)
