"""A degraded dataset read on the fly: base images + stored rankings.

`DegradedSource` is a Source whose images are the base dataset's images with
the top-ranked positions removed (ROAR) or kept (KAR), using the levels of the
rank store and the same numpy `degrade` function the writer uses. The
training and evaluation pipelines read it like any other Source; written to
disk with `writer.write_dataset`, it reads back bit for bit the same.
"""

import functools
from typing import Callable

import numpy as np
import tensorflow as tf

from roar_jax import levels as levels_lib
from roar_jax.data import degradation as degrade_lib
from roar_jax.data import rank_store as rank_store_lib
from roar_jax.data import source_protocol as source_lib


class DegradedSource:
  """Source of a base dataset degraded with stored rankings ('on_the_fly')."""

  def __init__(self, base, ranks, *, estimator: str, mode: str,
               threshold: float, fill: str, channel_mean=None, seed: int = 0,
               eval_geometry: Callable[[tf.Tensor], tf.Tensor] | None = None,
               batch_size: int = 128):
    """Builds the source.

    Args:
      base: the Source of the original images.
      ranks: a `RankStore`, or the workdir holding one.
      estimator: whose rankings to use.
      mode: 'roar' or 'kar'.
      threshold: fraction t in [0, 1] (removed for ROAR, kept for KAR).
      fill: 'channel_mean' or 'noisy_linear'.
      channel_mean: float [C] in [0, 255] pixel units; needed for
        fill='channel_mean' (the pipeline's `grid.channel_mean`).
      seed: seeds the noise of 'noisy_linear' (with each image's index).
      eval_geometry: optional tf function uint8 [H, W, C] -> uint8 [S, S, C]
        applied to the base images first, so they have the geometry the maps
        were computed on (e.g. `functools.partial(preprocess.eval_geometry,
        data_config=config.data)`).
      batch_size: images per `degrade` call; batching keeps the per-example
        Python overhead of `tf.numpy_function` small.
    """
    if isinstance(ranks, rank_store_lib.RankStore):
      self.ranks = ranks
    else:
      self.ranks = rank_store_lib.RankStore(ranks)
    self.base = base
    self.estimator = estimator
    self.mode = levels_lib.check_mode(mode)
    self.fill = levels_lib.check_fill(fill)
    k = levels_lib.threshold_level(threshold)
    self.threshold = float(threshold)
    self.seed = int(seed)
    self.eval_geometry = eval_geometry
    if not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError(f"batch_size={batch_size!r} must be a positive int")
    self._batch_size = batch_size
    if fill == "noisy_linear" and k == (100 if mode == "roar" else 0):
      raise ValueError(
          f"fill='noisy_linear' with mode={mode!r}, threshold={threshold} "
          "removes every pixel: nothing is left to interpolate from")

    channels = int(base.info.image_shape[-1])
    image_shape = self._image_shape(channels)
    if fill == "channel_mean":
      self.channel_mean = np.asarray(channel_mean, dtype=np.float64) if (
          channel_mean is not None) else None
      degrade_lib.fill_value(channel_mean, channels)
    else:
      self.channel_mean = None
    self.info = source_lib.DatasetInfo(
        name=f"{base.info.name}/{estimator}/{mode}/{self.threshold:g}/{fill}",
        num_classes=base.info.num_classes, image_shape=image_shape,
        num_examples=dict(base.info.num_examples),
        class_names=base.info.class_names)

  def _image_shape(self, channels: int) -> tuple[int, int, int]:
    """The degraded images' shape: the rankings' geometry, checked against
    the base images."""
    self.level_shape = self._find_level_shape()
    estimator, info = self.estimator, self.base.info
    if len(self.level_shape) == 3 and self.level_shape[-1] != channels:
      raise ValueError(
          f"rankings of estimator {estimator!r} have {self.level_shape[-1]} "
          f"channels; dataset {info.name!r} has {channels}")
    image_shape = tuple(self.level_shape[:2]) + (channels,)
    if self.eval_geometry is None and tuple(info.image_shape) != image_shape:
      raise ValueError(
          f"rankings of estimator {estimator!r} are {self.level_shape[:2]}, "
          f"images of {info.name!r} are {info.image_shape}: pass "
          "eval_geometry (the geometry the maps were computed on)")
    return image_shape

  def _find_level_shape(self) -> tuple[int, ...]:
    errors = []
    for split in self.base.info.num_examples:
      try:
        return self.ranks.level_shape(self.estimator, split)
      except ValueError as e:
        errors.append(str(e))
    raise ValueError(f"no usable rankings of estimator {self.estimator!r} in "
                     f"{self.ranks.root}: " + "; ".join(errors))

  @property
  def splits(self) -> tuple[str, ...]:
    return tuple(self.info.num_examples)

  @property
  def metadata(self) -> dict:
    """What defines this degradation (recorded by the writer)."""
    return {"base": self.base.info.name, "estimator": self.estimator,
            "mode": self.mode, "threshold": self.threshold, "fill": self.fill,
            "seed": self.seed,
            "channel_mean": (None if self.channel_mean is None
                             else self.channel_mean.tolist()),
            "level_shape": list(self.level_shape)}

  def _degrade_batch(self, images: np.ndarray, indices: np.ndarray, *,
                     split: str) -> np.ndarray:
    levels = self.ranks.lookup(self.estimator, split, indices)
    return degrade_lib.degrade(
        images, levels, threshold=self.threshold, mode=self.mode,
        fill=self.fill, channel_mean=self.channel_mean, indices=indices,
        seed=self.seed)

  def load(self, split: str, *, process_index: int = 0,
           process_count: int = 1) -> tf.data.Dataset:
    """This process's slice of `split`, degraded, in the base's order."""
    if split not in self.info.num_examples:
      raise ValueError(f"unknown split {split!r}; this dataset has "
                       f"{sorted(self.info.num_examples)}")
    ranked = self.ranks.num_examples(self.estimator, split)
    if ranked != self.info.num_examples[split]:
      raise ValueError(
          f"estimator {self.estimator!r} ranked {ranked} images of split "
          f"{split!r}; dataset {self.base.info.name!r} has "
          f"{self.info.num_examples[split]}")
    if self.ranks.level_shape(self.estimator, split) != self.level_shape:
      raise ValueError(
          f"rankings of estimator {self.estimator!r}, split {split!r} are "
          f"{self.ranks.level_shape(self.estimator, split)}, other splits "
          f"{self.level_shape}")
    ds = self.base.load(split, process_index=process_index,
                        process_count=process_count)
    if self.eval_geometry is not None:
      geometry = self.eval_geometry
      # Plain TF code: AutoGraph has nothing to convert (and fails to parse
      # lambdas in some versions).
      ds = ds.map(tf.autograph.experimental.do_not_convert(
          lambda ex: {**ex, "image": geometry(ex["image"])}),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    image_shape = list(self.info.image_shape)
    got = ds.element_spec["image"].shape
    if got.is_fully_defined() and list(got) != image_shape:
      raise ValueError(f"images of split {split!r} are {list(got)} after "
                       f"eval_geometry; the rankings need {image_shape}")
    fn = functools.partial(self._degrade_batch, split=split)

    @tf.autograph.experimental.do_not_convert
    def apply(ex):
      image = tf.numpy_function(fn, [ex["image"], ex["index"]], tf.uint8,
                                stateful=False)
      image.set_shape([None] + image_shape)
      return {**ex, "image": image}

    return (ds.batch(self._batch_size)
            .map(apply, num_parallel_calls=tf.data.AUTOTUNE,
                 deterministic=True)
            .unbatch())
