"""Model-free controls: random rankings (iid, and Gaussian-smoothed) and a Sobel
edge detector."""

import jax
import jax.numpy as jnp

from roar_jax.saliency import inputs as inputs_lib
from roar_jax.saliency import registry
from roar_jax.saliency import smoothing

Array = jax.Array

# Streams folded into an image's key, so that the random control and the
# noise of the ensembles never share random numbers.
RANDOM_STREAM = 1
NOISE_STREAM = 2


@registry.register("random", evaluations=0, model_free=True, random=True)
def random(inputs: inputs_lib.Inputs) -> Array:
  """Uniform [0, 1) scores, iid per value: a uniformly random ranking.

  An image's scores depend only on its key, fold_in(run key, image index):
  the same image gets the same ranking in every batch, epoch and rerun.
  """
  shape = inputs.images.shape[1:]
  return jax.vmap(lambda k: jax.random.uniform(
      jax.random.fold_in(k, RANDOM_STREAM), shape, jnp.float32))(inputs.keys)


@registry.register("random_smooth", evaluations=0, model_free=True,
                   random=True)
def random_smooth(inputs: inputs_lib.Inputs) -> Array:
  """`random`'s scores blurred by a Gaussian of `smooth_sigma` pixels.

  The same draw as `random` (same key, same stream): the two differ only in
  smoothness, the control for the blur bias of ROAR/ROAD (`smoothing.py`).
  """
  return smoothing.blur(random(inputs), inputs.options.smooth_sigma)


def _reflect_pad(x: Array, axis: int) -> Array:
  # scipy.ndimage's default mode 'reflect' (d c b a | a b c d) is numpy's
  # 'symmetric'.
  pad = [(0, 0)] * x.ndim
  pad[axis] = (1, 1)
  return jnp.pad(x, pad, mode="symmetric")


def _correlate3(x: Array, weights, axis: int) -> Array:
  """1-D correlation with a 3-tap filter along `axis`, reflect boundary."""
  p = _reflect_pad(x, axis)
  n = x.shape[axis]
  taps = [jax.lax.slice_in_dim(p, i, i + n, axis=axis) for i in range(3)]
  return sum(w * t for w, t in zip(weights, taps) if w)


def sobel_magnitude(images: Array) -> Array:
  """Per-channel gradient magnitude under the 3x3 Sobel filters.

  sqrt(Sx^2 + Sy^2), Sx = derivative [-1, 0, 1] along width smoothed by
  [1, 2, 1] along height, Sy the transpose; each channel on its own (unlike
  the original code's scipy.ndimage.sobel(img, axis=0), which also smooths
  across channels and keeps only the height derivative).

  Args:
    images: [N, H, W, C].

  Returns:
    [N, H, W, C] float32.
  """
  x = images.astype(jnp.float32)
  deriv, smooth = (-1.0, 0.0, 1.0), (1.0, 2.0, 1.0)
  sx = _correlate3(_correlate3(x, deriv, 2), smooth, 1)
  sy = _correlate3(_correlate3(x, deriv, 1), smooth, 2)
  return jnp.sqrt(sx * sx + sy * sy)


@registry.register("sobel", evaluations=0, model_free=True)
def sobel(inputs: inputs_lib.Inputs) -> Array:
  """Edges score high: the Sobel gradient magnitude of the image."""
  return sobel_magnitude(inputs.images)
