"""Blur Integrated Gradients (Xu et al., CVPR 2020), as PAIR's `BlurIG`.

The path runs through Gaussian blurs of the image, b(sigma) =
scipy.ndimage.gaussian_filter(x, (sigma, sigma, 0), mode='constant') (zeros
outside the image, kernel truncated at 4 sigma: radius int(4 sigma + 0.5),
renormalized over its taps) and b(0) = x. PAIR's discretization (sqrt=False):
sigma_i = i * max_sigma / steps for i = 0..steps, and

  map = -sum_{i<steps} (sigma_{i+1} - sigma_i)
        * (b(sigma_i + h) - b(sigma_i)) / h * grad f(b(sigma_i)),

h = `blur_ig_grad_step`: a left Riemann sum of the path integral from the
image (sigma 0) to its most blurred version, with the blur's derivative by a
forward difference. The map sums to about f(x) - f(b(max_sigma)); the first
interval contributes nothing where sigma + h rounds to a radius-0 kernel
(h < 1/8), as in PAIR.

A blur here is two matrix products, B_H X B_W^T per channel, with B[a, b] =
k[b - a] the banded (Toeplitz) matrix of scipy's kernel: the same taps and
the same zero boundary, as a separable convolution. The taps are computed
in float64 on the host (the sigmas are static), and so is the difference of
the kernels at sigma + h and sigma; the derivative is then
(dB X B2^T + B1 X dB^T) / h, which avoids float32's cancellation in
b(sigma + h) - b(sigma). The steps are evaluated in groups
(`inputs.group_loop`), so memory stays flat.
"""

import jax
import jax.numpy as jnp
import numpy as np

from roar_jax.saliency import inputs as inputs_lib
from roar_jax.saliency import registry

Array = jax.Array

# scipy.ndimage.gaussian_filter's default truncation, in standard deviations.
TRUNCATE = 4.0


def kernel_taps(sigma: float, reach: int) -> np.ndarray:
  """scipy's Gaussian kernel at offsets -reach..reach, float64 [2 reach + 1].

  Args:
    sigma: the standard deviation in pixels; 0 (or below scipy's 1e-15) is
      no blur.
    reach: the largest offset kept (image side - 1: farther taps only ever
      meet the zeros outside the image).

  Returns:
    The taps; those beyond scipy's radius int(4 sigma + 0.5) are 0, and the
    normalization is over scipy's whole kernel.
  """
  taps = np.zeros(2 * reach + 1)
  if sigma <= 1e-15:
    taps[reach] = 1.0
    return taps
  radius = int(TRUNCATE * float(sigma) + 0.5)
  t = np.arange(-radius, radius + 1)
  phi = np.exp(-0.5 / (sigma * sigma) * t ** 2)
  phi = phi / phi.sum()
  keep = np.abs(t) <= reach
  taps[t[keep] + reach] = phi[keep]
  return taps


def path_taps(steps: int, max_sigma: float, grad_step: float,
              reach: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The kernels of PAIR's path, float64 [steps, 2 reach + 1] each.

  Returns:
    (at, ahead, delta): the taps at sigma_i, at sigma_i + h, and
    (ahead - at) * (sigma_{i+1} - sigma_i) / h: the weighted difference.
  """
  # PAIR's schedule, in Python floats as PAIR computes it.
  sigmas = [float(i) * max_sigma / float(steps) for i in range(steps + 1)]
  at = np.stack([kernel_taps(s, reach) for s in sigmas[:-1]])
  ahead = np.stack([kernel_taps(s + grad_step, reach) for s in sigmas[:-1]])
  weights = np.array([(sigmas[i + 1] - sigmas[i]) / grad_step
                      for i in range(steps)])
  return at, ahead, (ahead - at) * weights[:, None]


def _matrices(taps: Array, size: int, reach: int) -> Array:
  """[g, 2 reach + 1] taps -> [g, size, size] matrices B[a, b] = k[b - a]."""
  offsets = np.arange(size)[None, :] - np.arange(size)[:, None] + reach
  return taps[:, offsets]


def _blur(rows: Array, cols: Array, x: Array) -> Array:
  """[g, H, H] and [g, W, W] matrices, x [N, H, W, C] -> [g, N, H, W, C]."""
  exact = jax.lax.Precision.HIGHEST
  y = jnp.einsum("gab,nbwc->gnawc", rows, x, precision=exact)
  return jnp.einsum("gnawc,gdw->gnadc", y, cols, precision=exact)


def blur(x: Array, sigma: float) -> Array:
  """scipy.ndimage.gaussian_filter(x[n], (sigma, sigma, 0), mode='constant')
  for every image of x [N, H, W, C] (float32)."""
  h, w = x.shape[1:3]
  reach = max(h, w) - 1
  taps = jnp.asarray(kernel_taps(sigma, reach)[None], x.dtype)
  return _blur(_matrices(taps, h, reach), _matrices(taps, w, reach), x)[0]


def _steps(options) -> int:
  return options.blur_ig_steps


@registry.register("blur_ig", ensemble=True, evaluations=_steps)
def blur_ig(inputs: inputs_lib.Inputs) -> Array:
  """Blur IG from the most blurred image to the image (module docstring)."""
  x = inputs.images
  n, h, w = x.shape[:3]
  opts = inputs.options
  steps = opts.blur_ig_steps
  reach = max(h, w) - 1
  at, ahead, delta = (jnp.asarray(t, x.dtype) for t in path_taps(
      steps, opts.blur_ig_max_sigma, opts.blur_ig_grad_step, reach))
  group = min(steps, inputs.group_size(forward_only=False))

  def body(ids, valid):
    i = jnp.minimum(ids, steps - 1)
    mats = lambda taps, size: _matrices(taps[i], size, reach)
    b1h, b1w = mats(at, h), mats(at, w)
    points = _blur(b1h, b1w, x)
    # b(sigma + h) - b(sigma) = dB X B2^T + B1 X dB^T, weighted.
    change = (_blur(mats(delta, h), mats(ahead, w), x) +
              _blur(b1h, mats(delta, w), x))
    grads = inputs.gradient_at(points)
    keep = valid.astype(x.dtype).reshape((-1,) + (1,) * x.ndim)
    return jnp.sum(change * grads * keep, axis=0)

  return -inputs_lib.group_loop(steps, group, body)
