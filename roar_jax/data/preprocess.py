"""Per-image preprocessing: evaluation geometry, augmentations, normalization.

All functions work on one uint8 image [H, W, C] inside a tf.data map (graph
mode); `eval_geometry` and `normalize` also accept numpy arrays and then
return numpy arrays, so other stages (explain, degrade) can use them directly.

The geometry follows the original ROAR code (Hooker et al. 2019): evaluation
resizes the shorter side to `eval_resize` with bicubic interpolation and takes
the central `image_size` square; the 'inception' training crop samples a box of
8%-100% of the area with aspect ratio in [3/4, 4/3] (one attempt, falling back
to a center crop), resizes it bicubically to `image_size`, and flips. Resized
images are rounded back to uint8, so training and evaluation images live in
the same value space as the stored ones.
"""

from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from roar_jax.data import names

AUGMENTATIONS = names.AUGMENTATIONS
CROP_PADDINGS = ("reflect", "zero")
# 'inception' fallback: the center crop keeps image_size / (image_size + 32)
# of the shorter side, as the original code's center-crop helper does.
CENTER_CROP_PADDING = 32


def _get(data_config: Mapping[str, Any], key: str, default=None):
  value = data_config.get(key, default)
  return default if value is None else value


def image_size_of(data_config: Mapping[str, Any]) -> int:
  """`config.data.image_size`, checked."""
  size = data_config.get("image_size")
  if not isinstance(size, (int, np.integer)) or size <= 0:
    raise ValueError(f"config.data.image_size={size!r} must be a positive int")
  return int(size)


def _round_uint8(image: tf.Tensor) -> tf.Tensor:
  # Bicubic interpolation overshoots: clip before rounding to uint8.
  return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)


def resize_shorter_side(image: tf.Tensor, size: int) -> tf.Tensor:
  """Bicubic resize so that the shorter side is `size`; uint8 -> uint8."""
  shape = tf.shape(image)
  h, w = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
  scale = tf.cast(size, tf.float64) / tf.minimum(h, w)
  new_h = tf.cast(tf.math.rint(h * scale), tf.int32)
  new_w = tf.cast(tf.math.rint(w * scale), tf.int32)
  resized = tf.image.resize(tf.cast(image, tf.float32), [new_h, new_w],
                            method="bicubic")
  return _round_uint8(resized)


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  """The central size x size square (the top-left one of two when odd)."""
  shape = tf.shape(image)
  top = (shape[0] - size) // 2
  left = (shape[1] - size) // 2
  return image[top:top + size, left:left + size]


def _eval_geometry_tf(image: tf.Tensor, size: int,
                      resize: int | None) -> tf.Tensor:
  channels = image.shape[-1]
  if resize is None:
    static = image.shape
    if static[0] == size and static[1] == size:
      return image  # Already the model's size: nothing to do.
    shape = tf.shape(image)
    out = tf.cond(
        tf.logical_and(tf.equal(shape[0], size), tf.equal(shape[1], size)),
        lambda: image,
        lambda: center_crop(resize_shorter_side(image, size), size))
  else:
    if resize < size:
      raise ValueError(f"config.data.eval_resize={resize} is smaller than "
                       f"config.data.image_size={size}")
    out = center_crop(resize_shorter_side(image, resize), size)
  out = tf.ensure_shape(out, [size, size, channels])
  return out


def eval_geometry(image, data_config: Mapping[str, Any]):
  """The evaluation geometry: uint8 [H, W, C] -> uint8 [S, S, C].

  With `config.data.eval_resize` set: bicubic resize of the shorter side to
  it, then the central S x S crop (S = `config.data.image_size`). Without it:
  the image unchanged if it is already S x S, else the shorter side resized to
  S and the center cropped.

  Args:
    image: uint8 [H, W, C], a tf.Tensor or a numpy array.
    data_config: `config.data`.

  Returns:
    uint8 [S, S, C], of the same kind (tf or numpy) as `image`.
  """
  size = image_size_of(data_config)
  resize = data_config.get("eval_resize")
  if isinstance(image, np.ndarray):
    if image.dtype != np.uint8 or image.ndim != 3:
      raise ValueError(f"eval_geometry: image must be uint8 [H, W, C], got "
                       f"{image.dtype} {image.shape}")
    if resize is None and image.shape[:2] == (size, size):
      return image
    return _eval_geometry_tf(tf.constant(image), size, resize).numpy()
  return _eval_geometry_tf(image, size, resize)


def mean_std(data_config: Mapping[str, Any], channels: int
             ) -> tuple[np.ndarray, np.ndarray]:
  """`config.data.mean`/`std` as float32 [C] arrays, checked."""
  out = []
  for field in ("mean", "std"):
    value = np.asarray(data_config.get(field), dtype=np.float32).reshape(-1)
    if value.size == 1:
      value = np.repeat(value, channels)
    if value.size != channels:
      raise ValueError(f"config.data.{field} has {value.size} values for "
                       f"images with {channels} channels")
    out.append(value)
  if np.any(out[1] <= 0):
    raise ValueError(f"config.data.std={tuple(out[1])} must be positive")
  return out[0], out[1]


def normalize(images, data_config: Mapping[str, Any]):
  """uint8 pixels -> the model's input space: (x / 255 - mean) / std.

  Args:
    images: uint8 [..., C], a tf.Tensor or a numpy array.
    data_config: `config.data` (uses `mean` and `std`, in [0, 1] units).

  Returns:
    float32 of the same shape and kind.
  """
  channels = images.shape[-1]
  mean, std = mean_std(data_config, channels)
  if isinstance(images, np.ndarray):
    return ((images.astype(np.float32) / 255.0 - mean) / std).astype(
        np.float32)
  return (tf.cast(images, tf.float32) / 255.0 - mean) / std


def denormalize(images, data_config: Mapping[str, Any]):
  """The inverse of `normalize`: model input -> float pixels in [0, 255]."""
  channels = images.shape[-1]
  mean, std = mean_std(data_config, channels)
  if isinstance(images, np.ndarray):
    return ((images * std + mean) * 255.0).astype(np.float32)
  return (images * std + mean) * 255.0


def _crop_flip(image: tf.Tensor, size: int, seed: tf.Tensor,
               padding: str, pixels: int) -> tf.Tensor:
  crop_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=2))
  pad = [[pixels, pixels], [pixels, pixels], [0, 0]]
  if padding == "reflect":
    padded = tf.pad(image, pad, mode="REFLECT")
  else:
    padded = tf.pad(image, pad)
  crop = tf.image.stateless_random_crop(
      padded, [size, size, image.shape[-1]], seed=crop_seed)
  return tf.image.stateless_random_flip_left_right(crop, seed=flip_seed)


def _inception_crop(image: tf.Tensor, size: int, seed: tf.Tensor) -> tf.Tensor:
  box_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=2))
  shape = tf.shape(image)
  begin, box_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
      seed=box_seed, min_object_covered=0.1,
      aspect_ratio_range=(3.0 / 4.0, 4.0 / 3.0), area_range=(0.08, 1.0),
      max_attempts=1, use_image_if_no_bounding_boxes=True)
  # A failed attempt returns the whole image; the original code then takes a
  # padded center crop instead.
  failed = tf.reduce_all(tf.equal(box_size[:2], shape[:2]))
  side = tf.cast(
      tf.cast(size, tf.float32) / float(size + CENTER_CROP_PADDING) *
      tf.cast(tf.minimum(shape[0], shape[1]), tf.float32), tf.int32)
  side = tf.maximum(side, 1)
  center = tf.stack([(shape[0] - side + 1) // 2, (shape[1] - side + 1) // 2,
                     0])
  begin = tf.where(failed, center, begin)
  box_size = tf.where(failed, tf.stack([side, side, -1]), box_size)
  crop = tf.slice(image, begin, box_size)
  resized = tf.image.resize(tf.cast(crop, tf.float32), [size, size],
                            method="bicubic")
  out = tf.image.stateless_random_flip_left_right(_round_uint8(resized),
                                                  seed=flip_seed)
  return tf.ensure_shape(out, [size, size, image.shape[-1]])


def train_geometry(image: tf.Tensor, data_config: Mapping[str, Any],
                   seed: tf.Tensor) -> tf.Tensor:
  """The training augmentation of `config.data.augment`, uint8 -> uint8.

  - 'none': the evaluation geometry.
  - 'crop_flip': evaluation geometry, then pad `config.data.crop_pixels`
    (default 4) pixels on each side (`config.data.crop_padding`: 'reflect'
    (default) or 'zero'), a random S x S crop and a random horizontal flip
    (the CIFAR recipe).
  - 'inception': a random box of 8%-100% of the area, aspect ratio in
    [3/4, 4/3], resized bicubically to S x S, and a random flip.

  Args:
    image: uint8 [H, W, C].
    data_config: `config.data`.
    seed: int [2] stateless seed; the same seed gives the same augmentation.

  Returns:
    uint8 [S, S, C].
  """
  size = image_size_of(data_config)
  augment = _get(data_config, "augment", "none")
  if augment == "none":
    return eval_geometry(image, data_config)
  if augment == "crop_flip":
    padding = _get(data_config, "crop_padding", "reflect")
    if padding not in CROP_PADDINGS:
      raise ValueError(f"config.data.crop_padding={padding!r} is not one of "
                       f"{CROP_PADDINGS}")
    return _crop_flip(eval_geometry(image, data_config), size, seed, padding,
                      int(_get(data_config, "crop_pixels", 4)))
  if augment == "inception":
    return _inception_crop(image, size, seed)
  raise ValueError(f"config.data.augment={augment!r} is not one of "
                   f"{AUGMENTATIONS}")
