"""The smoothness-matched controls `random_smooth.<estimator>` of the explain
stage.

`random_smooth.<e>` is `random_smooth` at the sigma whose ranking has the
same mean lag-1 spatial autocorrelation as <e>'s levels on the test split
(`saliency/smoothing.py`). It is ranked after every other estimator, once
<e>'s rank store is complete: its sigma is a function of those levels, read
by every process from the store (so every process finds the same sigma), and
its shards hold the same images as <e>'s. The noise of image i comes from
the explain stage's key and i alone, so `random_smooth.<e>` equals
`random_smooth` at the matched sigma, image by image.
"""

import dataclasses
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
  sigma = smoothing.match_sigma(target, levels.shape[1:])
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
