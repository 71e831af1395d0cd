"""Randomly masked images as a Source: the fine-tune's data.

Each image is degraded as a ROAR unit degrades it (mode 'roar': the
positions below the threshold's level take the fill, rounded to uint8 as
`degradation.degrade` rounds it), but under a ranking drawn at random and at a
fraction drawn uniformly from `finetune.fraction_range` (rounded to whole
percents, as the rank store's levels are). Both draws are a function of the
seed, the split and the image's index, so every process, batch and resume
sees the same masked image.

The training split is the base split `draws` times over (index
`d * N + i` is draw d of image i): the input pipeline holds a small split in
memory (`pipeline.split_arrays`), which would otherwise freeze one mask per
image for the whole fine-tune. The test split keeps its size: one draw per
image, on which the fine-tuned model's accuracy is measured.
"""

import functools

import numpy as np
import tensorflow as tf

from roar_jax import levels as levels_lib
from roar_jax.data import degradation
from roar_jax.data import source_protocol as source_lib

# The split's part of an image's seed: the test masks differ from the
# training masks of the same index.
_SPLIT_IDS = {"train": 1, "test": 2}


def random_levels(rng: np.random.Generator, shape) -> np.ndarray:
  """uint8 levels of a uniformly random ranking of the positions of
  `shape` (each position's rank, quantized as the rank store's)."""
  n = int(np.prod(shape))
  ranks = np.empty(n, np.int64)
  ranks[rng.permutation(n)] = np.arange(n)
  return ((ranks * levels_lib.NUM_LEVELS) // n).astype(np.uint8).reshape(
      shape)


class RandomMaskSource:
  """A Source whose images are `base`'s, randomly masked.

  Args:
    base: the undegraded Source.
    fill_value: the fill in [0, 255] pixel units, float [C] (the channel
      mean, or zeros for 'black'); rounded to uint8 as the metric rounds it.
    fraction_range: (low, high): the masked fraction of an image is drawn
      uniformly from it.
    seed: the draws' seed.
    granularity: 'pixel' (every channel of a position alike) or 'value'.
    draws: copies of the training split, each with its own masks.
  """

  def __init__(self, base, *, fill_value, fraction_range, seed: int,
               granularity: str = "pixel", draws: int = 1,
               batch_size: int = 256):
    self.base = base
    self.fill_value = np.asarray(fill_value, np.float64)
    self.fraction_range = tuple(float(v) for v in fraction_range)
    self.seed = int(seed)
    self.granularity = granularity
    self.draws = int(draws)
    self._batch_size = batch_size
    info = base.info
    self._sizes = dict(info.num_examples)
    sizes = {s: n * (self.draws if s == "train" else 1)
             for s, n in info.num_examples.items()}
    self.info = source_lib.DatasetInfo(
        name=f"{info.name}/random_masks", num_classes=info.num_classes,
        image_shape=tuple(info.image_shape), num_examples=sizes,
        class_names=info.class_names)

  def draw(self, split: str, index: int, shape) -> tuple[float, np.ndarray]:
    """The masked fraction (in whole percents) and the random levels of
    image `index` of the expanded split, for levels of `shape`."""
    rng = np.random.default_rng(
        [self.seed, _SPLIT_IDS.get(split, 3), int(index)])
    low, high = self.fraction_range
    percent = levels_lib.threshold_level(rng.uniform(low, high))
    return percent / levels_lib.NUM_LEVELS, random_levels(rng, shape)

  def mask(self, images: np.ndarray, split: str, indices) -> np.ndarray:
    """The masked uint8 images [b, H, W, C] of `images` (the base's images
    at `indices` of the expanded split): `degradation.degrade`'s 'roar'
    removal (levels below the threshold's) and its rounded fill, with a
    threshold per image, in one pass over the batch."""
    shape = images.shape[1:3] if self.granularity == "pixel" else (
        images.shape[1:])
    draws = [self.draw(split, index, shape)
             for index in np.asarray(indices).reshape(-1)]
    if not draws:
      return images
    levels = np.stack([levels for _, levels in draws])
    percents = np.array([round(t * levels_lib.NUM_LEVELS)
                         for t, _ in draws]).reshape(
                             (-1,) + (1,) * len(shape))
    removed = levels < percents
    if removed.ndim == 3:  # Pixel granularity: every channel alike.
      removed = removed[..., None]
    value = degradation.fill_value(self.fill_value, images.shape[-1])
    return np.where(removed, value, images).astype(np.uint8)

  def load(self, split: str, *, process_index: int = 0,
           process_count: int = 1) -> tf.data.Dataset:
    draws = self.draws if split == "train" else 1
    size = self._sizes[split]
    parts = []
    for d in range(draws):
      ds = self.base.load(split, process_index=process_index,
                          process_count=process_count)
      # Not converted by autograph (no temp file left: data/pipeline.py).
      parts.append(ds.map(tf.autograph.experimental.do_not_convert(
          functools.partial(_offset, offset=d * size))))
    ds = functools.reduce(lambda a, b: a.concatenate(b), parts)
    fn = functools.partial(self.mask, split=split)
    shape = list(self.info.image_shape)

    @tf.autograph.experimental.do_not_convert
    def apply(ex):
      image = tf.numpy_function(lambda x, i: fn(x, indices=i),
                                [ex["image"], ex["index"]], tf.uint8,
                                stateful=False)
      image.set_shape([None] + shape)
      return {**ex, "image": image}

    return ds.batch(self._batch_size).map(
        apply, num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True).unbatch()


def _offset(ex, offset: int):
  return {"image": ex["image"], "label": ex["label"],
          "index": tf.cast(ex["index"], tf.int64) + offset}
