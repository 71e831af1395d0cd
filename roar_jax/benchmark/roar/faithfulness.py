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
takes a uniform subset of `subset` distinct values (Floyd's algorithm) from
(config.seed, index_i, s). Each image takes runs + 1 model inputs (its clean
copy for f(x), then its runs), `metrics.batch_size` inputs a call.
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


def _below(hi: jax.Array, lo: jax.Array, span: jax.Array) -> jax.Array:
  """(hi * 2^32 + lo) mod span, span < 2^24, in uint32 arithmetic (8 bits a
  step): a uniform draw from [0, span) up to span / 2^64."""
  r = jnp.zeros_like(hi)
  for word in (hi, lo):
    for shift in (24, 16, 8, 0):
      r = (r * jnp.uint32(256) + ((word >> jnp.uint32(shift))
                                  & jnp.uint32(255))) % span
  return r


def _floyd(keys: jax.Array, num_values: int, size: int) -> jax.Array:
  """[...] keys -> [..., size] distinct positions in [0, num_values), each
  set of `size` equally likely (Floyd's algorithm: step j draws t from
  [0, span) with span = num_values - size + 1 + j and takes t, or span - 1
  if t is taken), from the key's 2 * size words."""
  if num_values >= 2**24:
    raise ValueError(f"{num_values} values: subsets need fewer than 2^24")
  words = metric_draws.bits(keys, 2 * size)

  def step(j, chosen):
    span = jnp.uint32(num_values - size + 1) + j.astype(jnp.uint32)
    t = _below(jax.lax.dynamic_index_in_dim(words, 2 * j, -1, False),
               jax.lax.dynamic_index_in_dim(words, 2 * j + 1, -1, False),
               span).astype(jnp.int32)
    taken = (chosen == t[..., None]).any(-1)
    pick = jnp.where(taken, span.astype(jnp.int32) - 1, t)
    return jax.lax.dynamic_update_index_in_dim(chosen, pick, j, -1)

  chosen = jnp.full(words.shape[:-1] + (size,), -1, jnp.int32)
  return jax.lax.fori_loop(0, size, step, chosen)


def subsets(keys: jax.Array, draws: jax.Array, num_values: int, size: int
            ) -> jax.Array:
  """[b, m, size] distinct flat value positions of the images' keys [b] and
  run numbers [m] (`_floyd` of run m's key)."""
  return _floyd(metric_draws.sample_keys(keys, draws), num_values, size)


@functools.partial(jax.jit, static_argnames=("size", "baseline"))
def _kernel(logits_fn, x, maps, target, keys, local, slot, *, size,
            baseline):
  """The call's inputs [p] -> [p, 2]: (sum of the map over S, f(x_S)); slot
  0 is the clean image (S empty), slot s its run s - 1."""
  f = x[0].size
  flat = x.reshape(x.shape[0], f)
  base = flat.min(-1) if baseline == "black" else flat.mean(-1)
  idx = _floyd(metric_draws.input_keys(keys, local, slot - 1), f, size)
  rows = flat[local]
  # The subset's values set to the baseline (kept for the clean image): a
  # scatter of the p x size values, no [p, D] mask.
  fill = jnp.where((slot > 0)[:, None], base[local][:, None],
                   jnp.take_along_axis(rows, idx, -1))
  perturbed = rows.at[jnp.arange(rows.shape[0])[:, None], idx].set(
      fill, unique_indices=True)
  logits = logits_fn(perturbed.reshape((-1,) + x.shape[1:]))
  out = jnp.take_along_axis(logits.astype(jnp.float32),
                            target[local][:, None], -1)[:, 0]
  sums = jnp.take_along_axis(
      maps.reshape(maps.shape[0], f).astype(jnp.float32)[local], idx,
      -1).sum(-1)
  return jnp.stack([sums, out], axis=-1)


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
  """Per-run (sum of the map over S, logit drop) [B, runs, 2], float64.

  The forwards of an image's clean copy and its runs share the calls: f(x)
  is computed once per image.
  """
  fn = metric_draws.as_partial(logits_fn)
  return metric_draws.per_input_with_clean(
      lambda *a: _kernel(fn, *a, size=size, baseline=baseline),
      [np.asarray(x, np.float32), np.asarray(maps, np.float32),
       np.asarray(target, np.int32)], keys, runs, batch_size)


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
