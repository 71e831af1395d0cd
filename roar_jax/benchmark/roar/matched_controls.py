"""The smoothness-matched controls `random_smooth.<estimator>` of the explain
stage.

`random_smooth.<e>` is `random_smooth` at the sigma whose ranking has the
same mean lag-1 spatial autocorrelation as <e>'s levels on the test split
(`saliency/smoothing.py` measures it; `match_sigma` bisects for the sigma). It is ranked after every other estimator, once
<e>'s rank store is complete: its sigma is a function of those levels, read
by every process from the store (so every process finds the same sigma), and
its shards hold the same images as <e>'s. The noise of image i comes from
the explain stage's key and i alone, so `random_smooth.<e>` equals
`random_smooth` at the matched sigma, image by image.
"""

import dataclasses
import functools
import math
from typing import Any

import jax
import numpy as np
from absl import logging

from roar_jax import saliency
from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import estimator_names as names
from roar_jax.data import rank_store as rank_store_lib
from roar_jax.saliency import smoothing

# The autocorrelation is the mean over the first test images (by index), which
# bounds the time of the measure on large test splits.
MATCH_IMAGES = 2000
RECORD = "matched.json"


# The bisection's bracket: below MIN_SIGMA the blur changes no ranking of iid
# noise measurably; above half the image side a ranking is one blob.
MIN_SIGMA = 0.05
# Noise images drawn to measure a sigma's autocorrelation, and bisection steps
# (the bracket [MIN_SIGMA, H / 2] shrinks to about 1e-6 of its log-width).
MATCH_SAMPLES = 64
MATCH_STEPS = 24


@functools.lru_cache(maxsize=64)
def noise_autocorrelation(sigma: float, shape: tuple[int, ...],
                          seed: int = 0) -> float:
  """The lag-1 autocorrelation of the levels of blurred iid noise.

  Args:
    sigma: the blur (0: iid noise).
    shape: the level shape of one image, (H, W) for pixel rankings (noise
      drawn for 3 channels and summed, as `random_smooth` at pixel
      granularity) or (H, W, C) for value rankings.
    seed: of the noise images.

  Returns:
    `smoothing.lag1_autocorrelation` of MATCH_SAMPLES noise images' levels.
  """
  h, w = shape[:2]
  channels = shape[2] if len(shape) == 3 else 3
  noise = np.random.default_rng(seed).random(
      (MATCH_SAMPLES, h, w, channels), np.float32)
  # Ranked as the explain stage ranks `random_smooth` (blurred, then
  # summed over channels at pixel granularity: the blur is linear).
  levels = saliency.rank(noise, transform="signed", blur_sigma=sigma,
                         granularity="pixel" if len(shape) == 2 else "value")
  return smoothing.lag1_autocorrelation(np.asarray(levels))


def match_sigma(target: float, shape: tuple[int, ...]) -> float:
  """The sigma whose `random_smooth` ranking has autocorrelation `target`.

  Args:
    target: a lag-1 autocorrelation (`lag1_autocorrelation` of an
      estimator's levels).
    shape: the level shape of one image, (H, W) or (H, W, C).

  Returns:
    sigma in pixels: 0 when `target` is no more than iid noise gives; half the
    larger image side when even that is not as smooth as `target`.
  """
  shape = tuple(int(s) for s in shape)
  lo, hi = MIN_SIGMA, max(shape[:2]) / 2.0
  if not target > noise_autocorrelation(lo, shape):
    return 0.0
  if target >= noise_autocorrelation(hi, shape):
    return hi
  for _ in range(MATCH_STEPS):
    mid = math.sqrt(lo * hi)  # Bisection of log sigma.
    if noise_autocorrelation(mid, shape) < target:
      lo = mid
    else:
      hi = mid
  return math.sqrt(lo * hi)


def match(store: rank_store_lib.RankStore, estimator: str) -> dict[str, Any]:
  """The matched sigma of `estimator`'s complete test-split rank store.

  Args:
    store: the rank store.
    estimator: the estimator to match.

  Returns:
    {'estimator', 'autocorrelation' (its mean lag-1 autocorrelation),
     'images' (how many test images), 'sigma' (pixels)}.
  """
  levels = store.read(estimator, "test")[:MATCH_IMAGES]
  target = smoothing.lag1_autocorrelation(levels)
  sigma = match_sigma(target, levels.shape[1:])
  return {"estimator": estimator, "autocorrelation": target,
          "images": int(len(levels)), "sigma": sigma}


@dataclasses.dataclass
class Context:
  """What ranking a matched control needs from the explain stage.

  Attributes:
    store: the rank store.
    model: the explained model (the controls never call it).
    key: the stage's key; split s uses fold_in(key, s), as the stage does.
    channels: channels of the images.
    granularity: `explain.granularity`.
    batch_size: images per call.
  """
  store: rank_store_lib.RankStore
  model: Any
  key: jax.Array
  channels: int
  granularity: str
  batch_size: int


def _levels(ctx: Context, split_key, indices: np.ndarray, level_shape,
            sigma: float) -> np.ndarray:
  """`random_smooth` levels of the images `indices` at `sigma`."""
  h, w = level_shape[:2]
  out = []
  for start in range(0, len(indices), ctx.batch_size):
    idx = indices[start:start + ctx.batch_size].astype(np.int32)
    # Only the shape of the images matters to a model-free random control.
    images = np.zeros((len(idx), h, w, ctx.channels), np.float32)
    maps = saliency.explain(ctx.model, images, method=names.SMOOTH,
                            key=split_key, indices=idx, smooth_sigma=sigma)
    out.append(np.asarray(saliency.rank(maps, granularity=ctx.granularity,
                                        transform="abs")))
  return np.concatenate(out)


def rank(ctx: Context, name: str, shards: dict[str, tuple[int, list[int]]]
         ) -> int:
  """Writes this process's shards of the matched control `name`.

  Args:
    ctx: the stage's context.
    name: `random_smooth.<e>`.
    shards: per split, (number of shards, this process's shard numbers), as
      the stage laid out <e>'s.

  Returns:
    The number of shards written.
  """
  target = names.parse(name).matched_to
  todo = {split: [s for s in mine
                  if not ctx.store.has_shard(name, split, s, num)]
          for split, (num, mine) in shards.items()}
  if not any(todo.values()):
    return 0
  record = match(ctx.store, target)
  record_path = workdir_lib.join(ctx.store.root, name, RECORD)
  if jax.process_index() == 0:
    workdir_lib.write_json(record_path, record)
  logging.info("explain: %s matches %s's autocorrelation %.4f with sigma "
               "%.3f", name, target, record["autocorrelation"],
               record["sigma"])
  level_shape = ctx.store.level_shape(target, "test")
  written = 0
  for split_id, split in enumerate(("test", "train")):
    num = shards[split][0]
    split_key = jax.random.fold_in(ctx.key, split_id)
    for shard in todo[split]:
      indices = ctx.store.shard_indices(target, split, shard, num)
      levels = _levels(ctx, split_key, indices, level_shape, record["sigma"])
      ctx.store.write_shard(name, split, shard, num, indices, levels)
      written += 1
  return written
