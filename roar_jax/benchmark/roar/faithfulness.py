"""Faithfulness correlation (Bhatt et al. 2020), as Quantus's
`FaithfulnessCorrelation`.

"Evaluating and aggregating feature-based model explanations" (IJCAI 2020):
over random subsets S of |S| features, the Pearson correlation between the
map's sum over S and the drop of the model's output when S is replaced by a
baseline,

    mu_F = corr_S( sum_{i in S} Phi_i(x), f(x) - f(x with x_S = baseline) ).

As Quantus 0.6: `metrics.faithfulness_runs` subsets per image (nr_runs,
100), each of `metrics.faithfulness_subset` distinct values of the image's
H x W x C (subset_size; Quantus's default 224 is one side of its 224 x 224
ImageNet inputs, 0.15% of the values; 0 here means the image's side, 32 of a
32 x 32 x 3 image's 3,072 values, 1%: a 224-value subset would be 7% of such
an image), replaced by `metrics.faithfulness_baseline` ('black': the image's
smallest value, Quantus's 'black'; 'mean': the image's mean); f is the
logit of the class predicted on the clean image (Quantus's softmax=False),
Phi the estimator's map of it. Quantus first divides the map by its largest
magnitude, which a correlation ignores. Higher is better. An image whose
sums or drops do not vary has no correlation (NaN, as scipy's pearsonr):
its value is left out of the mean, and `n` counts the images scored.

The subsets are drawn in JAX (`metric_draws`, stream 23): run s of image i
takes the `subset` largest of uniform draws from (config.seed, index_i, s).
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from roar_jax.benchmark.roar import curves as curves_lib
from roar_jax.benchmark.roar import metric_draws
from roar_jax.benchmark.roar import metric_registry

NAME = "faithfulness_correlation"


def subsets(keys: jax.Array, draws: jax.Array, num_values: int, size: int
            ) -> jax.Array:
  """[b, m, size] distinct flat value positions of the images' keys [b] and
  run numbers [m] (the top `size` of uniform draws over the values)."""
  k = metric_draws.sample_keys(keys, draws)
  return jax.vmap(jax.vmap(lambda kk: jax.lax.top_k(
      jax.random.uniform(kk, (num_values,)), size)[1]))(k)


@functools.partial(jax.jit, static_argnames=("size", "baseline"))
def _kernel(logits_fn, x, maps, target, keys, draws, *, size, baseline):
  """[r] images -> [r, m, 2]: (sum of the map over S, f(x) - f(x_S))."""
  r, f = x.shape[0], x[0].size
  idx = subsets(keys, draws, f, size)
  m = idx.shape[1]
  flat = x.reshape(r, f)
  base = flat.min(-1) if baseline == "black" else flat.mean(-1)
  hit = jax.vmap(jax.vmap(
      lambda i: jnp.zeros((f,), bool).at[i].set(True)))(idx)
  perturbed = jnp.where(hit, base[:, None, None], flat[:, None])
  logits = logits_fn(jnp.concatenate(
      [x, perturbed.reshape((r * m,) + x.shape[1:])])).astype(jnp.float32)
  t = jnp.concatenate([target, jnp.repeat(target, m)])
  out = jnp.take_along_axis(logits, t[:, None], -1)[:, 0]
  drop = out[:r, None] - out[r:].reshape(r, m)
  sums = jnp.take_along_axis(
      jnp.broadcast_to(maps.reshape(r, 1, f).astype(jnp.float32), (r, m, f)),
      idx, -1).sum(-1)
  return jnp.stack([sums, drop], axis=-1)


def subset_size(options, shape) -> int:
  """`faithfulness_subset`, 0 read as the image's side; below the number of
  values."""
  size = int(options.faithfulness_subset) or int(shape[0])
  if size >= int(np.prod(shape)):
    raise ValueError(f"config.metrics.faithfulness_subset={size} must be "
                     f"below the image's {int(np.prod(shape))} values")
  return size


def terms(logits_fn, x, maps, target, keys, *, runs: int, size: int,
          baseline: str, batch_size: int) -> np.ndarray:
  """Per-run (sum of the map over S, logit drop) [B, runs, 2], float64."""
  kernel = functools.partial(_kernel, metric_draws.as_partial(logits_fn),
                             size=size, baseline=baseline)
  return metric_draws.per_sample(
      kernel, [jnp.asarray(x, jnp.float32), jnp.asarray(maps, jnp.float32),
               jnp.asarray(target, jnp.int32)], keys, runs, batch_size)


def pearson(t: np.ndarray) -> np.ndarray:
  """Pearson's r of the two terms over the runs [B, R, 2] -> [B] (NaN where
  either does not vary)."""
  a = t[..., 0] - t[..., 0].mean(-1, keepdims=True)
  b = t[..., 1] - t[..., 1].mean(-1, keepdims=True)
  den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
  with np.errstate(invalid="ignore", divide="ignore"):
    r = np.where(den > 0, (a * b).sum(-1) / np.where(den > 0, den, 1.0),
                 np.nan)
  return np.clip(r, -1.0, 1.0)


def summarize(values, options) -> dict[str, Any]:
  """Mean and 95% interval over the images with a correlation."""
  del options
  v = np.asarray(values[NAME], np.float64)
  value, low, high, n = curves_lib.mean_ci(v[np.isfinite(v)])
  return {"value": value, "ci95_low": low, "ci95_high": high, "n": n,
          "num_undefined": int((~np.isfinite(v)).sum())}


@metric_registry.register(
    NAME, needs=("maps",), lower_is_better=False, summarize=summarize,
    title="Faithfulness correlation: map sums vs logit drops")
def per_image(batch: metric_registry.Batch) -> dict[str, np.ndarray]:
  """The batch's faithfulness correlation per image."""
  o = batch.options
  x = batch.normalized()
  keys = metric_draws.image_keys(batch.seed,
                                 metric_draws.FAITHFULNESS_STREAM,
                                 batch.indices)
  t = terms(batch.logits, x, batch.maps(), batch.predicted(), keys,
            runs=o.faithfulness_runs, size=subset_size(o, x.shape[1:]),
            baseline=o.faithfulness_baseline, batch_size=o.batch_size)
  return {NAME: pearson(t)}
