"""SRG, the symmetric relevance gain of Blücher et al. (TMLR 2024), per fill.

"Decoupling pixel flipping and occlusion strategy for consistent XAI
benchmarks": the same occlusion (fill) removes positions in two orders, most
relevant first (MoRF, their MIF) and least relevant first (LeRF, LIF); the
curve is the softmax probability of the class the model predicts on the
clean image; SRG is the area between the two curves,

    SRG = int_0^1 (p_LeRF(f) - p_MoRF(f)) df,

at the occluded fraction f (their code integrates the difference of the two
mean curves over [0, 1]; the area of a difference is the difference of the
areas). A good ranking keeps the class while the unimportant positions go
(LeRF high) and loses it once the important ones go (MoRF low): higher is
better; a random order gives about 0. Removing a relevance-free
occlusion bias from both orders is the paper's point: the fill's own effect
appears in both curves and cancels.

Here: f = k/K, k = 0..K with K = `metrics.steps` (whole percents, as
deletion); MoRF at f removes the positions of level < 100 f of the rank
store, LeRF those of level >= 100 (1 - f). Both orders see the clean image
at f = 0 and a fully occluded one at f = 1, so the difference is 0 there and
only the K - 1 inner fractions are scored (2 (K - 1) model inputs per image;
ROAD's imputation cannot fill a whole image anyway). One metric per fill:
`srg_channel_mean` (the grid's fill rounded to uint8, as deletion's),
`srg_black`, `srg_blur` (Gaussian, `metrics.blur_sigma`), and
`srg_noisy_linear` (ROAD's noisy linear imputation, `data/imputation.py`,
with ROAD's per-image noise and `metrics.imputation`).
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from roar_jax import levels as levels_lib
from roar_jax.benchmark.roar import curves as curves_lib
from roar_jax.benchmark.roar import metric_draws
from roar_jax.benchmark.roar import metric_registry
from roar_jax.benchmark.roar.metric_options import deletion_fractions
from roar_jax.data import degradation as degrade_lib
from roar_jax.data import imputation as imputation_lib

FILLS = ("channel_mean", "black", "blur", "noisy_linear")
TITLES = {
    "channel_mean": "SRG (channel mean): LeRF - MoRF probability",
    "black": "SRG (black): LeRF - MoRF probability",
    "blur": "SRG (blur): LeRF - MoRF probability",
    "noisy_linear": "SRG (noisy linear): LeRF - MoRF probability",
}


def inner_levels(steps: int) -> tuple[int, ...]:
  """The whole-percent levels of the fractions 1/K, ..., (K-1)/K (the
  fractions 0 and 1 give equal curves), repeats dropped."""
  ks = [levels_lib.threshold_level(k / steps) for k in range(1, steps)]
  return tuple(k for k in dict.fromkeys(ks)
               if 0 < k < levels_lib.NUM_LEVELS)


def _removed(levels, ks):
  """MoRF and LeRF masks [b, 2, T, H, W, 1|C] of the levels [b, H, W(, C)]."""
  if levels.ndim == 3:
    levels = levels[..., None]
  k = jnp.asarray(ks, jnp.int32)[None, :, None, None, None]
  lv = levels[:, None].astype(jnp.int32)
  return jnp.stack([lv < k, lv >= levels_lib.NUM_LEVELS - k], axis=1)


def _target_probability(logits_fn, images, target, mean, std):
  """Softmax probability of `target` [b] for uint8-valued [b, 2, T, ...]."""
  b, o, t = images.shape[:3]
  flat = images.reshape((-1,) + images.shape[3:]).astype(jnp.float32)
  logits = logits_fn((flat / 255.0 - mean) / std)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).reshape(
      b, o, t, -1)
  return jnp.take_along_axis(probs, target[:, None, None, None], -1)[..., 0]


@functools.partial(jax.jit, static_argnames=("ks", "fill", "blur_sigma"))
def _occluded_chunk(logits_fn, images, levels, target, fill_value, mean, std,
                    *, ks, fill, blur_sigma):
  """[b] images -> MoRF and LeRF probabilities [b, 2, T] under a fill that
  needs no solve (a constant or the blurred image)."""
  x = images.astype(jnp.float32)
  if fill == "blur":
    filled = curves_lib.gaussian_blur(x, blur_sigma)
  else:
    filled = jnp.broadcast_to(fill_value.astype(jnp.float32), x.shape)
  removed = _removed(levels, ks)
  occluded = jnp.where(removed, filled[:, None, None], x[:, None, None])
  return _target_probability(logits_fn, occluded, target, mean, std)


@functools.partial(jax.jit, static_argnames=("ks",))
def _masks(levels, *, ks):
  return _removed(levels, ks)


@jax.jit
def _imputed_probability(logits_fn, imputed, target, mean, std):
  return _target_probability(logits_fn, imputed, target, mean, std)


def _noisy_linear_chunk(logits_fn, images, levels, target, noise, mean, std,
                        *, ks, options):
  """MoRF and LeRF probabilities [b, 2, T] under ROAD's imputation."""
  removed = _masks(jnp.asarray(levels), ks=ks)
  b, o, t = removed.shape[:3]
  x = jnp.broadcast_to(jnp.asarray(images)[:, None, None],
                       (b, o, t) + images.shape[1:])
  nz = jnp.broadcast_to(jnp.asarray(noise)[:, None, None], x.shape)
  imputed = imputation_lib.noisy_linear(
      x, removed, nz, solver=options.imputation, precision=options.precision)
  return _imputed_probability(logits_fn, jnp.asarray(imputed), target, mean,
                              std)


def _fill_value(fill: str, batch: metric_registry.Batch, channels: int):
  if fill == "black":
    return np.zeros(channels, np.float32)
  if fill == "channel_mean":
    # metric_options.check refuses srg_channel_mean without the stage's
    # channel mean; a hand-made Batch without one gets mid-grey, as the
    # deletion curves do.
    if batch.fill_value is None:
      return np.full(channels, 128.0, np.float32)
    return degrade_lib.fill_value(batch.fill_value, channels).astype(
        np.float32)
  return np.zeros(channels, np.float32)  # Unused by 'blur'.


def occlusion_curves(batch: metric_registry.Batch, fill: str) -> np.ndarray:
  """MoRF and LeRF probability curves of the batch under `fill`.

  Returns:
    float64 [B, 2, T]: order 0 MoRF, 1 LeRF, at the fractions of
    `inner_levels(options.steps)`.
  """
  options = batch.options
  ks = inner_levels(options.steps)
  images = np.asarray(batch.images)
  c = images.shape[-1]
  mean = jnp.asarray(np.broadcast_to(np.asarray(batch.mean, np.float32), c))
  std = jnp.asarray(np.broadcast_to(np.asarray(batch.std, np.float32), c))
  fn = metric_draws.as_partial(batch.logits)
  target = batch.predicted()
  value = jnp.asarray(_fill_value(fill, batch, c))
  n = images.shape[0]
  # `batch_size` model inputs per call; no padding past a small batch.
  rows = min(max(1, options.batch_size // (2 * len(ks))), max(1, n))
  out = []
  for start in range(0, n, rows):
    sel = np.minimum(np.arange(start, start + rows), n - 1)
    kept = min(rows, n - start)
    if fill == "noisy_linear":
      noise = imputation_lib.noise(np.asarray(batch.indices)[sel],
                                   images.shape[1:], seed=batch.seed,
                                   std=options.noise_std).astype(np.float32)
      p = _noisy_linear_chunk(fn, images[sel], batch.levels[sel],
                              jnp.asarray(target[sel]), noise, mean, std,
                              ks=ks, options=options)
    else:
      p = _occluded_chunk(fn, jnp.asarray(images[sel]),
                          jnp.asarray(batch.levels[sel]),
                          jnp.asarray(target[sel]), value, mean, std, ks=ks,
                          fill=fill, blur_sigma=float(options.blur_sigma))
    out.append(np.asarray(p, np.float64)[:kept])
  return np.concatenate(out)


def gain_curves(morf_lerf: np.ndarray, steps: int) -> np.ndarray:
  """[B, 2, T] inner MoRF / LeRF curves -> [B, K + 1] LeRF - MoRF at the
  fractions `deletion_fractions(steps)` (0 at both ends)."""
  diff = morf_lerf[:, 1] - morf_lerf[:, 0]
  fractions = np.round(deletion_fractions(steps) * levels_lib.NUM_LEVELS)
  ks = inner_levels(steps)
  out = np.zeros((diff.shape[0], len(fractions)), np.float64)
  for j, f in enumerate(fractions):
    if int(f) in ks:
      out[:, j] = diff[:, ks.index(int(f))]
  return out


def summarize(name: str, values, options) -> dict[str, Any]:
  """The record entry: SRG's mean over the images with its 95% interval,
  the mean gain curve and its interval per point."""
  return curves_lib.summarize_curve(values[name],
                                    deletion_fractions(options.steps))


def _register(fill: str):
  name = f"srg_{fill}"

  def per_image(batch):
    curves = occlusion_curves(batch, fill)
    return {name: gain_curves(curves, batch.options.steps)}

  metric_registry.register(
      name, needs=("ranks",), lower_is_better=False,
      widths=lambda options: {name: (options.steps + 1,)},
      summarize=lambda values, options: summarize(name, values, options),
      title=TITLES[fill])(per_image)


for _fill in FILLS:
  _register(_fill)
