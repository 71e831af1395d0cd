"""Infidelity (Yeh et al. 2019), as Captum's `captum.metrics.infidelity`.

"On the (in)fidelity and sensitivity of explanations": the expected squared
error between the map's prediction of a perturbation's effect and the
effect,

    INFD(Phi, f, x) = E_I[(I . Phi(x) - (f(x) - f(x - I)))^2],

estimated from `metrics.infidelity_samples` (Captum's n_perturb_samples,
10) draws of I per image. f is the logit of the class the model predicts on
the clean image (Captum's forward function is the model; the class its
target); Phi the estimator's map of that class, in the model's input space.
I is Gaussian noise of std `metrics.infidelity_noise_std` (0.2, in the
model's input units), the paper's "noisy baseline" perturbation for images
(x0 = x + eps, I = x - x0); Captum takes any perturbation function, and
this is the one the reference script gives it. `metrics.infidelity_normalize`
is Captum's `normalize` (off by default, as Captum): Phi scaled by the
optimal beta = E[I.Phi (f(x) - f(x-I))] / E[(I.Phi)^2] first, as the paper's
code does. Lower is better. The product I . Phi is the local form, for maps
not multiplied by the input (Captum's `multiply_by_inputs=False`).

The draws: `metric_draws` (stream 21), sample s of image i from (config.seed,
index_i, s). Each image takes samples + 1 model inputs (its clean copy for
f(x), then its samples), `metrics.batch_size` inputs a call.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from roar_jax.benchmark.roar import metric_draws
from roar_jax.benchmark.roar import metric_registry

NAME = "infidelity"


def perturbations(keys: jax.Array, draws: jax.Array, shape, std
                  ) -> jax.Array:
  """The perturbations I [b, m, *shape] of images' keys [b] and sample
  numbers [m]: N(0, std^2) per value (`jax.random.normal` of the sample's
  key, reshaped)."""
  k = metric_draws.sample_keys(keys, draws)
  noise = metric_draws.normal(k, int(np.prod(shape)))
  return std * noise.reshape(noise.shape[:2] + tuple(shape))


@functools.partial(jax.jit, static_argnames="size")
def _noise(keys, local, slot, std, *, size):
  """The call's perturbations [p, D] (flat: drawn in the [p, D] layout, not
  in one with the channels minor, which XLA's CPU code runs several times
  slower); slot 0 is the clean image (I = 0), slot s its sample s - 1."""
  k = metric_draws.input_keys(keys, local, slot - 1)
  noise = std * metric_draws.normal(k, size)
  return jnp.where((slot == 0)[:, None], 0.0, noise)


@jax.jit
def _kernel(logits_fn, x, maps, target, local, noise):
  """The call's inputs [p] -> [p, 2]: (I . Phi, f(x - I)).

  A separate call from `_noise`: drawn in the same program, the noise costs
  the forwards a quarter more on CPU (measured with a small CNN).
  """
  d = x[0].size
  moved = x.reshape(-1, d)[local] - noise
  logits = logits_fn(moved.reshape((-1,) + x.shape[1:])).astype(jnp.float32)
  f = jnp.take_along_axis(logits, target[local][:, None], -1)[:, 0]
  dot = jnp.einsum("pd,pd->p", noise,
                   maps.reshape(-1, d).astype(jnp.float32)[local])
  return jnp.stack([dot, f], axis=-1)


def terms(logits_fn, x, maps, target, keys, *, samples: int, std: float,
          batch_size: int) -> np.ndarray:
  """Per-sample (I . Phi, f(x) - f(x - I)) [B, samples, 2], float64.

  The forwards of an image's clean copy and its samples share the calls:
  f(x) is computed once per image.
  """
  fn, std = metric_draws.as_partial(logits_fn), jnp.float32(std)

  def kernel(x_, maps_, target_, keys_, local, slot):
    return _kernel(fn, x_, maps_, target_, local,
                   _noise(keys_, local, slot, std, size=x_[0].size))

  return metric_draws.per_input_with_clean(
      kernel,
      [np.asarray(x, np.float32), np.asarray(maps, np.float32),
       np.asarray(target, np.int32)], keys, samples, batch_size)


def from_terms(t: np.ndarray, normalize: bool = False) -> np.ndarray:
  """Captum's infidelity [B] from the per-sample terms [B, N, 2]."""
  dot, diff = t[..., 0], t[..., 1]
  n = t.shape[1]
  if not normalize:
    return ((dot - diff) ** 2).sum(-1) / n
  a, b, c = (dot ** 2).sum(-1), (dot * diff).sum(-1), (diff ** 2).sum(-1)
  # Captum's safe_div: a zero denominator divides by 1.
  beta = b / np.where(a == 0, 1.0, a)
  return (beta * beta * a - 2 * beta * b + c) / n


@metric_registry.register(
    NAME, needs=("maps",), lower_is_better=True,
    title="Infidelity: E[(I . map - (f(x) - f(x - I)))^2]")
def per_image(batch: metric_registry.Batch) -> dict[str, np.ndarray]:
  """The batch's infidelity per image."""
  o = batch.options
  keys = metric_draws.image_keys(batch.seed, metric_draws.INFIDELITY_STREAM,
                                 batch.indices)
  t = terms(batch.logits, batch.normalized(), batch.maps(), batch.predicted(),
            keys, samples=o.infidelity_samples, std=o.infidelity_noise_std,
            batch_size=o.batch_size)
  return {NAME: from_terms(t, o.infidelity_normalize)}
