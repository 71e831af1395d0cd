"""Maps -> removal order, quantized to 100 levels (docs/design.md, "Ranking").

Level q of an image holds the positions whose rank r (0 = most important)
satisfies floor(100 r / P), P = positions per image. Removing every level
below t removes exactly ceil(t P / 100) positions (t an integer percent), so
one stored ranking serves every threshold, ROAR and KAR.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from roar_jax import levels as levels_lib
from roar_jax.saliency import smoothing
from jax.sharding import NamedSharding, PartitionSpec as P

Array = jax.Array

GRANULARITIES = ("pixel", "value")
TRANSFORMS = ("abs", "square", "signed")
NUM_LEVELS = levels_lib.NUM_LEVELS


def scores(maps: Array, granularity: str = "pixel",
           transform: str = "abs") -> Array:
  """Importance per position: [B, H, W] ('pixel') or [B, H, W, C] ('value').

  'pixel' sums the transformed map over channels, so a pixel is removed in
  every channel at once; 'value' scores each (h, w, c) on its own. NaNs score
  lowest.
  """
  maps = maps.astype(jnp.float32)
  if transform == "abs":
    s = jnp.abs(maps)
  elif transform == "square":
    s = jnp.square(maps)
  else:
    s = maps
  if granularity == "pixel":
    s = jnp.sum(s, axis=-1)
  # + 0.0 turns -0.0 into 0.0, so that equal scores tie exactly.
  return jnp.where(jnp.isnan(s), -jnp.inf, s) + 0.0


def _levels_of_row(score: Array) -> Array:
  flat = score.reshape(-1)
  num = flat.shape[0]
  # Stable sort, descending: among equal scores the lower index comes first.
  order = jnp.argsort(flat, stable=True, descending=True)
  ranks = jnp.zeros((num,), jnp.int32).at[order].set(
      jnp.arange(num, dtype=jnp.int32))
  # floor(100 r / P) in int64-free arithmetic: r < P, so 100 r fits in int32
  # for any image of fewer than 21 million positions.
  levels = (ranks * NUM_LEVELS) // num
  return levels.astype(jnp.uint8).reshape(score.shape)


def blurred_scores(maps: Array, granularity: str, transform: str,
                   sigma: float) -> Array:
  """`scores` blurred by a Gaussian of `sigma` pixels (`blur.<estimator>`).

  The transformed scores are blurred, not the maps, so that opposite signs
  do not cancel under 'abs' and 'square'. NaN scores count as 0 in the
  blur (the smallest 'abs' and 'square' score).
  """
  s = scores(maps, granularity, transform)
  return smoothing.blur(jnp.where(jnp.isfinite(s), s, 0.0), sigma) + 0.0


@functools.lru_cache(maxsize=None)
def _rank_fn(granularity: str, transform: str, sigma: float, mesh, axis):
  def rank_rows(maps):
    s = (blurred_scores(maps, granularity, transform, sigma) if sigma else
         scores(maps, granularity, transform))
    return jax.vmap(_levels_of_row)(s)
  if mesh is None:
    return jax.jit(rank_rows)
  # Each device ranks its own rows: no communication, output sharded alike.
  sharded = jax.shard_map(rank_rows, mesh=mesh, in_specs=P(axis),
                          out_specs=P(axis), check_vma=False)
  return jax.jit(sharded, out_shardings=NamedSharding(mesh, P(axis)))


def rank(maps, *, granularity: str = "pixel", transform: str = "abs",
         blur_sigma: float = 0.0) -> Array:
  """Removal-order levels 0..99 per position (0 = the most important 1%).

  Args:
    maps: [B, H, W, C] saliency maps (a numpy or jax array; sharded over a
      mesh axis gives levels sharded the same way).
    granularity: 'pixel' (score = sum over channels; levels [B, H, W]) or
      'value' (every (h, w, c) ranked on its own; levels [B, H, W, C]).
    transform: 'abs' (default), 'square' (same order as abs) or 'signed'
      (largest positive first).
    blur_sigma: > 0 blurs the transformed scores by a Gaussian of this many
      pixels before ranking (`blurred_scores`); 0 ranks them as they are.

  Returns:
    uint8 levels; ties break by position (the lower flat index is more
    important), so the result is deterministic.
  """
  if granularity not in GRANULARITIES:
    raise ValueError(f"granularity={granularity!r}: expected one of "
                     f"{list(GRANULARITIES)}")
  if transform not in TRANSFORMS:
    raise ValueError(f"transform={transform!r}: expected one of "
                     f"{list(TRANSFORMS)}")
  blur_sigma = float(blur_sigma)
  if not 0 <= blur_sigma <= 1024:
    raise ValueError(f"blur_sigma={blur_sigma!r} must be in [0, 1024] pixels")
  shape = tuple(getattr(maps, "shape", np.shape(maps)))
  if len(shape) != 4 or not all(shape):
    raise ValueError(f"maps must be [B, H, W, C] with every size > 0, got "
                     f"shape {shape}")
  mesh = axis = None
  sharding = getattr(maps, "sharding", None)
  if isinstance(sharding, NamedSharding) and len(sharding.spec) > 0 and (
      sharding.spec[0] is not None):
    mesh, axis = sharding.mesh, sharding.spec[0]
  if not isinstance(maps, jax.Array):
    maps = jnp.asarray(maps)
  return _rank_fn(granularity, transform, blur_sigma, mesh, axis)(maps)
