"""Sensitivity-max and -avg (Yeh et al. 2019), as Captum's `sensitivity_max`.

The relative change of the map under small input perturbations:

    SENS_max = max_j ||Phi(x + d_j) - Phi(x)||_F / ||Phi(x)||_F,

over `metrics.sensitivity_samples` (Captum's n_perturb_samples, 10) draws
d_j ~ U[-r, r]^D with r = `metrics.sensitivity_radius` (Captum's
perturb_radius, 0.02, in the model's input units, as Captum perturbs the
inputs it is given); Captum's norm_ord 'fro', a zero norm of Phi(x) read as
1. `sensitivity_avg` is the mean over the draws in place of the max (Yeh et
al.'s average sensitivity with Captum's relative norm). Phi(x + d) explains
the class predicted on the clean image (Captum expands the target), with
the estimator's explain options; a randomized estimator draws its noise
from the image's index, so the clean and perturbed maps share their draws.
Lower is better.

The perturbations are drawn in JAX (`metric_draws`, stream 22); the maps of
`metrics.batch_size` perturbed images (image-major, the last call padded)
are one `maps_fn` call; both metrics share one computation per batch.
"""

import jax
import jax.numpy as jnp
import numpy as np

from roar_jax.benchmark.roar import metric_draws
from roar_jax.benchmark.roar import metric_registry

NAMES = ("sensitivity_max", "sensitivity_avg")


@jax.jit
def perturbed_inputs(x, radius, keys, draws):
  """[r] images -> [r * m] perturbed copies x + d, d ~ U[-radius, radius]
  (`jax.random.uniform` of sample j's key, reshaped)."""
  k = metric_draws.sample_keys(keys, draws)
  d = metric_draws.uniform(k, x[0].size, -radius, radius)
  return (x[:, None] + d.reshape(d.shape[:2] + x.shape[1:])).reshape(
      (-1,) + x.shape[1:])


@jax.jit
def _moved(x, radius, keys, local, slot):
  """The call's inputs [p]: image local_p moved by its draw slot_p."""
  k = metric_draws.input_keys(keys, local, slot)
  # Flat [p, D]: drawn with the channels minor, XLA's CPU code is slower.
  d = metric_draws.uniform(k, x[0].size, -radius, radius)
  return (x.reshape(-1, d.shape[1])[local] + d).reshape((-1,) + x.shape[1:])


@jax.jit
def relative_change(clean, perturbed):
  """[p] clean maps, [p] perturbed maps -> [p] relative norms."""
  p = clean.shape[0]
  base = jnp.linalg.norm(clean.reshape(p, -1), axis=-1)
  base = jnp.where(base == 0, 1.0, base)
  return jnp.linalg.norm((perturbed - clean).reshape(p, -1), axis=-1) / base


def ratios(maps_fn, x, maps, target, indices, keys, *, samples: int,
           radius: float, batch_size: int) -> np.ndarray:
  """||Phi(x + d_j) - Phi(x)|| / ||Phi(x)|| per image and draw [B, N].

  Args:
    maps_fn: (images [n, ...], targets [n], indices [n]) -> maps [n, ...].
    x: [B, H, W, C] images in the model's input space.
    maps: their maps Phi(x).
    target, indices: [B] the explained classes, the images' indices.
    keys: [B] image keys (`metric_draws.image_keys`).
    samples, radius, batch_size: the options.
  """
  radius = jnp.float32(radius)

  def kernel(x_, maps_, t_, i_, k_, local, slot):
    moved = _moved(x_, radius, k_, local, slot)
    pm = maps_fn(np.asarray(moved), t_[local], i_[local])
    return relative_change(maps_[local], jnp.asarray(pm, jnp.float32))

  return metric_draws.per_input(
      kernel, [np.asarray(x, np.float32), np.asarray(maps, np.float32),
               np.asarray(target), np.asarray(indices)], keys, samples,
      batch_size)


def _ratios(batch: metric_registry.Batch) -> np.ndarray:
  o = batch.options
  keys = metric_draws.image_keys(batch.seed, metric_draws.SENSITIVITY_STREAM,
                                 batch.indices)
  return ratios(
      lambda images, targets, indices: batch.maps_fn(
          batch.estimator, images, targets, indices),
      batch.normalized(), batch.maps(), batch.predicted(), batch.indices,
      keys, samples=o.sensitivity_samples, radius=o.sensitivity_radius,
      batch_size=o.batch_size)


@metric_registry.register(
    "sensitivity_max", needs=("maps",), lower_is_better=True,
    title="Sensitivity-max: largest relative change of the map")
def sensitivity_max(batch: metric_registry.Batch) -> dict[str, np.ndarray]:
  r = batch.cached("sensitivity", lambda: _ratios(batch))
  return {"sensitivity_max": r.max(axis=1)}


@metric_registry.register(
    "sensitivity_avg", needs=("maps",), lower_is_better=True,
    title="Sensitivity-avg: mean relative change of the map")
def sensitivity_avg(batch: metric_registry.Batch) -> dict[str, np.ndarray]:
  r = batch.cached("sensitivity", lambda: _ratios(batch))
  return {"sensitivity_avg": r.mean(axis=1)}
