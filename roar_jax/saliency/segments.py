"""Superpixels on the host (scikit-image): LIME's and KernelSHAP's features,
XRAI's segments.

These run once per batch before the jitted call (`registry.register(
prepare=...)`), on numpy images. Each prepare function has a `shapes(options,
image_shape)` attribute, {name: (per-image shape, dtype)}, so the work can be
counted without running it.
"""

import numpy as np
from scipy import ndimage
from skimage import morphology
from skimage import segmentation
from skimage import transform

# PAIR's XRAI (saliency/core/xrai.py): Felzenszwalb at six scales on the
# image resized to 224x224 with values in [-1, 1], sigma 0.8, minimum segment
# size 150, every segment dilated by a disk of radius 5.
FELZENSZWALB_SCALES = (50, 100, 150, 250, 500, 1200)
FELZENSZWALB_SIGMA = 0.8
FELZENSZWALB_MIN_SIZE = 150
FELZENSZWALB_RESIZE = (224, 224)
XRAI_DILATION_RADIUS = 5


def max_features(options) -> int:
  """Feature slots of LIME and KernelSHAP: 2 x num_segments, rounded to 8."""
  return -(-2 * options.num_segments // 8) * 8


def pixel_images(images: np.ndarray, options) -> np.ndarray:
  """The images in pixel space, [0, 1] (see `Options.pixel_mean`)."""
  x = np.asarray(images, np.float64)
  if options.pixel_mean is not None or options.pixel_std is not None:
    mean = np.asarray(options.pixel_mean or (0.0,))
    std = np.asarray(options.pixel_std or (1.0,))
    return np.clip(x * std + mean, 0.0, 1.0)
  low = x.min(axis=(1, 2, 3), keepdims=True)
  high = x.max(axis=(1, 2, 3), keepdims=True)
  return (x - low) / np.where(high > low, high - low, 1.0)


def _slic(image: np.ndarray, options) -> np.ndarray:
  if image.shape[-1] == 1:
    return segmentation.slic(image[..., 0], n_segments=options.num_segments,
                             channel_axis=None, start_label=0)
  return segmentation.slic(image, n_segments=options.num_segments,
                           convert2lab=image.shape[-1] == 3, start_label=0)


def superpixels(images: np.ndarray, options, arrays) -> dict:
  """{'segments': [B, H, W] labels 0..M-1, 'segment_sizes': [B, D] pixels}.

  SLIC (`num_segments`) on the images in pixel space, or the given
  `segments` ([H, W] or [B, H, W] integer labels), relabeled 0..M-1 per
  image. At most D = `max_features(options)` segments: labels beyond are
  merged into the last one.
  """
  b, h, w = images.shape[:3]
  slots = max_features(options)
  given = arrays.get("segments")
  if given is not None:
    given = np.broadcast_to(np.asarray(given), (b, h, w))
  else:
    pixels = pixel_images(images, options)
  labels = np.zeros((b, h, w), np.int32)
  sizes = np.zeros((b, slots), np.float32)
  for i in range(b):
    raw = given[i] if given is not None else _slic(pixels[i], options)
    _, inverse = np.unique(raw, return_inverse=True)
    seg = np.minimum(inverse.reshape(h, w), slots - 1).astype(np.int32)
    labels[i] = seg
    sizes[i] = np.bincount(seg.ravel(), minlength=slots)
  return {"segments": labels, "segment_sizes": sizes}


superpixels.shapes = lambda options, image_shape: {
    "segments": (tuple(image_shape[:2]), np.int32),
    "segment_sizes": ((max_features(options),), np.float32)}


def _felzenszwalb_masks(image: np.ndarray) -> list[np.ndarray]:
  """PAIR's XRAI segments of one image: a list of [H, W] boolean masks."""
  h, w = image.shape[:2]
  x = np.asarray(image, np.float64)
  span = x.max() - x.min()
  x = (x - x.min()) / (span if span > 0 else 1.0) * 2.0 - 1.0
  x = transform.resize(x, FELZENSZWALB_RESIZE, order=3, mode="constant",
                       preserve_range=True, anti_aliasing=True)
  disk = morphology.disk(XRAI_DILATION_RADIUS).astype(bool)
  masks = []
  for scale in FELZENSZWALB_SCALES:
    seg = segmentation.felzenszwalb(x, scale=scale, sigma=FELZENSZWALB_SIGMA,
                                    min_size=FELZENSZWALB_MIN_SIZE,
                                    channel_axis=-1)
    seg = transform.resize(seg, (h, w), order=0, preserve_range=True,
                           mode="constant", anti_aliasing=False).astype(int)
    ids = np.arange(seg.min(), seg.max() + 1)
    onehot = seg[None] == ids[:, None, None]
    onehot = onehot[onehot.any(axis=(1, 2))]  # Empty ones are never chosen.
    # All of a scale's masks dilated in one call: the footprint is flat
    # along the mask axis.
    masks.extend(ndimage.binary_dilation(onehot, structure=disk[None]))
  return masks


def xrai_segments(images: np.ndarray, options, arrays) -> dict:
  """{'xrai_masks': [B, S, H, W] bool}, S = `xrai_max_segments`.

  PAIR's order (scale, then label); beyond S masks the smallest are dropped;
  missing ones are empty (never chosen).
  """
  del arrays
  b, h, w = images.shape[:3]
  cap = options.xrai_max_segments
  out = np.zeros((b, cap, h, w), bool)
  for i in range(b):
    masks = _felzenszwalb_masks(images[i])
    if len(masks) > cap:
      sizes = np.array([m.sum() for m in masks])
      keep = np.sort(np.argsort(-sizes, kind="stable")[:cap])
      masks = [masks[k] for k in keep]
    if masks:
      out[i, :len(masks)] = np.stack(masks)
  return {"xrai_masks": out}


xrai_segments.shapes = lambda options, image_shape: {
    "xrai_masks": ((options.xrai_max_segments,) + tuple(image_shape[:2]),
                   np.bool_)}
