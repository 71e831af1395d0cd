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
index_i, s). One jitted call scores `rows` images x `draws` samples (the
samples vmapped, the forwards in one batch of at most `metrics.batch_size`).
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
  numbers [m]: N(0, std^2) per value."""
  k = metric_draws.sample_keys(keys, draws)
  return std * jax.vmap(jax.vmap(
      lambda kk: jax.random.normal(kk, shape, jnp.float32)))(k)


def _logit_of(logits_fn, images, target):
  return jnp.take_along_axis(logits_fn(images).astype(jnp.float32),
                             target[:, None], -1)[:, 0]


@jax.jit
def _kernel(logits_fn, x, maps, target, std, keys, draws):
  """[r] images -> [r, m, 2]: (I . Phi, f(x) - f(x - I)) per sample."""
  noise = perturbations(keys, draws, x.shape[1:], std)
  r, m = noise.shape[:2]
  perturbed = (x[:, None] - noise).reshape((r * m,) + x.shape[1:])
  fx = _logit_of(logits_fn, x, target)
  fp = _logit_of(logits_fn, perturbed, jnp.repeat(target, m)).reshape(r, m)
  dot = jnp.einsum("rmhwc,rhwc->rm", noise, maps.astype(jnp.float32))
  return jnp.stack([dot, fx[:, None] - fp], axis=-1)


def terms(logits_fn, x, maps, target, keys, *, samples: int, std: float,
          batch_size: int) -> np.ndarray:
  """Per-sample (I . Phi, f(x) - f(x - I)) [B, samples, 2], float64."""
  kernel = functools.partial(_kernel, metric_draws.as_partial(logits_fn))
  return metric_draws.per_sample(
      lambda x_, m_, t_, k_, d_: kernel(x_, m_, t_, jnp.float32(std), k_, d_),
      [jnp.asarray(x, jnp.float32), jnp.asarray(maps, jnp.float32),
       jnp.asarray(target, jnp.int32)], keys, samples, batch_size)


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
