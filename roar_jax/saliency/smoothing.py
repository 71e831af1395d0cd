"""Gaussian smoothing of maps, and how smooth a ranking is.

The blur bias of ROAR and ROAD (Song, Cha and Seo 2023): ROAD's noisy-linear
imputation restores scattered removed pixels better than clustered ones, so a
spatially smooth ranking removes more information than iid random without
knowing anything about the model. The smoothness controls (`random_smooth`,
`blur.<estimator>`) are built from the pieces here:

- `gaussian_kernel` / `blur`: the sampled Gaussian, truncated at 4 sigma and
  renormalized, applied separably along height and width with scipy.ndimage's
  default 'reflect' boundary (d c b a | a b c d), so `blur` equals
  `scipy.ndimage.gaussian_filter(x, (0, sigma, sigma, 0))`.
- `lag1_autocorrelation`: the mean correlation of horizontally and vertically
  adjacent levels of a ranking, per image, averaged over images.

`benchmark/roar/matched_controls.py` finds the sigma whose blurred noise has
an estimator's autocorrelation.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# scipy.ndimage's default truncation: the kernel reaches 4 sigma each side.
TRUNCATE = 4.0


def gaussian_kernel(sigma: float) -> np.ndarray:
  """The sampled Gaussian exp(-t^2 / (2 sigma^2)), |t| <= round(4 sigma).

  Args:
    sigma: standard deviation in pixels, > 0.

  Returns:
    float64 [2 r + 1], summing to 1 (r = int(4 sigma + 0.5), as scipy).
  """
  radius = max(int(TRUNCATE * float(sigma) + 0.5), 1)
  t = np.arange(-radius, radius + 1, dtype=np.float64)
  k = np.exp(-0.5 * (t / float(sigma)) ** 2)
  return k / k.sum()


def _correlate(x: Array, kernel: np.ndarray, axis: int) -> Array:
  """1-D correlation along `axis` with a symmetric kernel, reflect boundary."""
  radius = kernel.shape[0] // 2
  pad = [(0, 0)] * x.ndim
  pad[axis] = (radius, radius)
  # numpy's 'symmetric' is scipy's 'reflect', repeated when the kernel is
  # wider than the image.
  p = jnp.moveaxis(jnp.pad(x, pad, mode="symmetric"), axis, -1)
  shape = p.shape
  flat = p.reshape(-1, 1, shape[-1])
  out = jax.lax.conv_general_dilated(
      flat, jnp.asarray(kernel, x.dtype)[None, None, :], (1,), "VALID",
      precision=jax.lax.Precision.HIGHEST)
  return jnp.moveaxis(out.reshape(shape[:-1] + (out.shape[-1],)), -1, axis)


def blur(x, sigma: float) -> Array:
  """Gaussian blur of every image along its height and width.

  Args:
    x: [B, H, W] or [B, H, W, C] float (maps or scores).
    sigma: pixels; 0 returns `x` unchanged.

  Returns:
    float32, shaped like `x`.
  """
  x = jnp.asarray(x, jnp.float32)
  if not sigma:
    return x
  kernel = gaussian_kernel(sigma)
  return _correlate(_correlate(x, kernel, 1), kernel, 2)


def lag1_autocorrelation(levels) -> float:
  """Mean lag-1 spatial autocorrelation of rankings.

  Per image (and channel, for value rankings): the levels standardized over
  the image, then the mean product of horizontally adjacent values and that
  of vertically adjacent values, averaged (Moran's I with the 4-neighbour
  weights). Images with constant levels are left out.

  Args:
    levels: [N, H, W] or [N, H, W, C] (uint8 levels or any scores).

  Returns:
    The mean over images (NaN when every image is constant).
  """
  v = np.asarray(levels, np.float64)
  if v.ndim == 3:
    v = v[..., None]
  v = np.moveaxis(v, -1, 1).reshape((-1,) + v.shape[1:3])
  v = v - v.mean(axis=(1, 2), keepdims=True)
  var = np.mean(v * v, axis=(1, 2))
  horizontal = np.mean(v[:, :, 1:] * v[:, :, :-1], axis=(1, 2))
  vertical = np.mean(v[:, 1:] * v[:, :-1], axis=(1, 2))
  ok = var > 0
  if not ok.any():
    return math.nan
  return float(np.mean(0.5 * (horizontal[ok] + vertical[ok]) / var[ok]))
