"""Degradation: remove (ROAR) or keep (KAR) the ranked positions of images.

One numpy function, `degrade`, serves both the input pipeline that degrades
on the fly (`degraded.DegradedSource`, through `tf.numpy_function`) and the
writer that materializes degraded datasets, so the two produce identical
images by construction.

Rankings arrive quantized (see the rank store): `levels[..., p] = q` when
position p's rank lies in [q%, (q+1)%) of all positions, level 0 holding the
most important ones. For a threshold t, with k = round(100 t):

- ROAR removes the positions with level < k (the top-t fraction);
- KAR keeps those and removes the rest.

Levels of shape [H, W] rank pixels (the same positions are removed in every
channel); levels of shape [H, W, C] rank every value on its own.

Removed values are filled with
- 'channel_mean': the per-channel mean of the training split (Hooker et al.),
  rounded to uint8 so every path stores the very same bytes; or
- 'noisy_linear': ROAD's noisy linear imputation (Rong et al. 2022): every
  removed pixel is the weighted mean of its 8 neighbours (1/6 direct, 1/12
  diagonal, renormalized where a neighbour lies outside the image), solved
  jointly for all removed pixels as one sparse linear system, plus Gaussian
  noise of std 0.01 in [0, 1] pixel units. A constant fill marks the removed
  positions, and the mask's shape alone tells the class; the imputation hides
  the mask. `road_fill.noisy_linear_fill` solves one image (scipy, the
  reference); `degrade` solves a whole batch at once (`imputation.py`).
"""


import numpy as np

from roar_jax.data import imputation
from roar_jax.levels import NUM_LEVELS, check_fill, removal_mask

def _check_levels(levels, images: np.ndarray, batched: bool) -> np.ndarray:
  levels = np.asarray(levels)
  if not np.issubdtype(levels.dtype, np.integer):
    raise ValueError(f"levels must be an integer (uint8) array, got "
                     f"{levels.dtype}")
  lead = images.shape[:3] if batched else images.shape[:2]
  expected = (f"{tuple(lead)} (pixel) or {tuple(images.shape)} (value)")
  if levels.shape != tuple(lead) and levels.shape != images.shape:
    raise ValueError(f"levels has shape {levels.shape}; for images of shape "
                     f"{images.shape} it must be {expected}")
  if levels.size and (levels.min() < 0 or levels.max() >= NUM_LEVELS):
    raise ValueError(f"levels must lie in [0, {NUM_LEVELS}), got "
                     f"[{levels.min()}, {levels.max()}]")
  return levels


def fill_value(channel_mean, channels: int) -> np.ndarray:
  """The uint8 [C] value of the 'channel_mean' fill (rounded half up).

  Args:
    channel_mean: float [C] in [0, 255] pixel units.
    channels: C, the images' channel count.

  Returns:
    uint8 [C].
  """
  if channel_mean is None:
    raise ValueError("fill='channel_mean' needs channel_mean (the training "
                     "split's per-channel mean in [0, 255] pixel units)")
  mean = np.asarray(channel_mean, dtype=np.float64).reshape(-1)
  if mean.shape != (channels,):
    raise ValueError(f"channel_mean has {mean.size} values; the images have "
                     f"{channels} channels")
  if not np.all(np.isfinite(mean)) or mean.min() < 0 or mean.max() > 255:
    raise ValueError(f"channel_mean={mean.tolist()} must lie in [0, 255] "
                     "(pixel units, not [0, 1])")
  return np.floor(mean + 0.5).astype(np.uint8)


def degrade(images, levels, *, threshold: float, mode: str, fill: str,
            channel_mean=None, indices=None, seed: int = 0) -> np.ndarray:
  """Removes (ROAR) or keeps (KAR) the top-ranked positions of images.

  Args:
    images: uint8 [B, H, W, C], or one image [H, W, C].
    levels: quantized ranks in [0, 100), level 0 the most important: [B, H, W]
      (pixel granularity: the same positions removed in every channel) or
      [B, H, W, C] (value granularity); without the B for one image.
    threshold: fraction t in [0, 1]; k = round(100 t) levels are "the top".
    mode: 'roar' removes the levels below k; 'kar' keeps them and removes the
      rest.
    fill: 'channel_mean' or 'noisy_linear' (ROAD).
    channel_mean: for fill='channel_mean': the training split's per-channel
      mean, float [C] in [0, 255] pixel units (rounded to uint8 here).
    indices: for fill='noisy_linear': each image's global index in its split
      (int [B], or an int for one image), which seeds its noise together with
      `seed`, so an image gets the same fill in every batch, epoch and run.
      Default: the position in the batch.
    seed: the run's seed for the noise of 'noisy_linear'.

  Returns:
    uint8 images shaped like `images`.

  Raises:
    ValueError: a bad argument (the message names it), or 'noisy_linear'
      asked to remove every pixel of an image (or channel), which leaves
      nothing to interpolate from.
  """
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim not in (3, 4):
    raise ValueError(f"images must be uint8 [B, H, W, C] or [H, W, C], got "
                     f"{images.dtype} {images.shape}")
  batched = images.ndim == 4
  levels = _check_levels(levels, images, batched)
  check_fill(fill)
  removed = removal_mask(levels, threshold=threshold, mode=mode)
  if not batched:
    images, removed = images[None], removed[None]
  if removed.ndim == 3:  # Pixel granularity: every channel alike.
    removed = removed[..., None]
  batch, channels = images.shape[0], images.shape[-1]

  if fill == "channel_mean":
    value = fill_value(channel_mean, channels)
    out = np.where(removed, value, images)
  else:
    if indices is None:
      indices = np.arange(batch)
    indices = np.asarray(indices).reshape(-1)
    if not np.issubdtype(indices.dtype, np.integer):
      raise ValueError(f"indices must be integers, got {indices.dtype}")
    if indices.shape != (batch,):
      raise ValueError(f"indices has {indices.size} entries for {batch} "
                       "images")
    out = _noisy_linear_batch(images, removed, indices, seed)
  return out if batched else out[0]


def _noisy_linear_batch(images: np.ndarray, removed: np.ndarray,
                        indices: np.ndarray, seed: int) -> np.ndarray:
  """ROAD's imputation of a batch, solved for the whole batch at once
  (`imputation.noisy_linear`: banded Cholesky on a CPU, conjugate gradients
  on an accelerator) instead of one sparse solve per image
  (`noisy_linear_fill`, the reference), with the same noise; values agree
  with the reference to 1e-5 before rounding to uint8."""
  imputation.check_removable(removed, indices)
  noise = imputation.noise(indices, images.shape[1:], seed=seed)
  return np.asarray(imputation.noisy_linear(images, removed, noise))


def channel_mean(source, split: str = "train") -> np.ndarray:
  """Per-channel mean of a split, in [0, 255] pixel units.

  Streams over the split in batches and sums exactly in int64, so memory does
  not grow with the split and the result does not depend on the batching.

  Args:
    source: a Source (`source.py`).
    split: the split to average over.

  Returns:
    float64 [C].
  """
  channels = int(source.info.image_shape[-1])
  total = np.zeros(channels, dtype=np.int64)
  count = 0
  # No map: a mapped function would be converted by autograph, which leaves
  # a temp file behind when the run is killed (see data/pipeline.py).
  for batch in source.load(split).batch(256).as_numpy_iterator():
    images = batch["image"]
    total += images.reshape(-1, channels).sum(0, dtype=np.int64)
    count += images.size // channels
  if count == 0:
    raise ValueError(f"split {split!r} of dataset {source.info.name!r} is "
                     "empty: no channel mean")
  return total / count
