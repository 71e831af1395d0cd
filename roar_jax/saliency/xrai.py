"""XRAI (Kapishnikov et al. 2019), PAIR saliency's algorithm and defaults.

1. Integrated gradients from two baselines, the image's minimum and maximum
   value everywhere ("black" and "white"), `xrai_steps` (100) steps each;
   the attribution is their mean, reduced over channels by the maximum (as
   PAIR's `_attr_aggregation_max`).
2. Segments: Felzenszwalb over-segmentations at six scales, dilated
   (`segments.xrai_segments`, on the host).
3. Greedy: repeatedly add the segment whose not-yet-selected pixels have the
   highest mean attribution (gain per area), skipping segments that add
   fewer than `xrai_min_pixel_diff` (50) pixels; each pixel gets the gain of
   the step that added it. Pixels no segment covers get their own mean
   attribution.
The IG points are evaluated in groups (`inputs.group_loop`); the greedy loop
runs in JAX for all the chunk's images at once, each step one masked sum over
every remaining segment.
Differences from PAIR: the IG path is the right Riemann sum k/m, k = 1..m
(PAIR: m points from 0 to 1 inclusive), as `integrated_gradients` here.
"""

import jax
import jax.numpy as jnp

from roar_jax.saliency import inputs as inputs_lib
from roar_jax.saliency import registry
from roar_jax.saliency import segments as segments_lib

Array = jax.Array


def _attribution(inputs: inputs_lib.Inputs) -> Array:
  """Mean IG over the min and max baselines, max over channels [N, H, W]."""
  x = inputs.images
  n = x.shape[0]
  axes = tuple(range(1, x.ndim))
  low = jnp.min(x, axis=axes, keepdims=True) * jnp.ones_like(x)
  high = jnp.max(x, axis=axes, keepdims=True) * jnp.ones_like(x)
  bases = jnp.stack([low, high])  # [2, N, H, W, C]
  steps = inputs.options.xrai_steps
  group = inputs.group_size(rows_per_sample=2, forward_only=False)

  def body(ids, valid):
    alphas = (ids.astype(x.dtype) + 1) / steps  # [g]
    g = ids.shape[0]
    a = alphas.reshape((g, 1, 1) + (1,) * (x.ndim - 1))
    points = bases[None] + a * (x[None, None] - bases[None])  # [g, 2, N, ...]
    flat = points.reshape((g * 2 * n,) + x.shape[1:])
    grads = inputs_lib.target_gradient(inputs.part("logits"), flat,
                                       jnp.tile(inputs.targets, g * 2))
    grads = grads.reshape(points.shape) * valid.reshape(
        (g,) + (1,) * (points.ndim - 1)).astype(x.dtype)
    return jnp.sum(grads, axis=0)  # [2, N, H, W, C]

  total = inputs_lib.group_loop(steps, group, body)
  ig = (x[None] - bases) * total / steps
  return jnp.max(jnp.mean(ig, axis=0), axis=-1)


def greedy(attr: Array, masks: Array, min_pixel_diff: int) -> Array:
  """XRAI's greedy selection for a batch: attr [N, P], masks [N, S, P] bool.

  Returns [N, P]: the gain of the step that added each pixel.
  """
  n, s, _ = masks.shape
  masks_f = masks.astype(attr.dtype)
  least = max(int(min_pixel_diff), 1)

  def cond(state):
    _, _, _, active, step = state
    return jnp.any(active) & (step < s)

  def body(state):
    current, out, used, active, step = state
    fresh = masks_f * (~current)[:, None, :].astype(attr.dtype)
    count = jnp.sum(fresh, axis=2)  # [N, S]
    total = jnp.einsum("nsp,np->ns", fresh, attr)
    ok = (count >= least) & ~used
    gain = jnp.where(ok, total / jnp.maximum(count, 1), -jnp.inf)
    best = jnp.argmax(gain, axis=1)
    found = jnp.any(ok, axis=1) & active
    best_gain = jnp.take_along_axis(gain, best[:, None], 1)[:, 0]
    added = (jnp.take_along_axis(fresh, best[:, None, None], 1)[:, 0] > 0)
    added = added & found[:, None]
    out = jnp.where(added, best_gain[:, None], out)
    used = used | (jax.nn.one_hot(best, s, dtype=bool) & found[:, None])
    return current | added, out, used, found, step + 1

  init = (jnp.zeros(attr.shape, bool), jnp.full(attr.shape, -jnp.inf),
          jnp.zeros((n, s), bool), jnp.ones((n,), bool), 0)
  current, out, _, _, _ = jax.lax.while_loop(cond, body, init)
  rest = ~current
  rest_mean = jnp.sum(jnp.where(rest, attr, 0), 1) / jnp.maximum(
      jnp.sum(rest, 1), 1)
  return jnp.where(rest, rest_mean[:, None], out)


@registry.register("xrai", prepare=segments_lib.xrai_segments,
                   evaluations=1)
def xrai(inputs: inputs_lib.Inputs) -> Array:
  """XRAI's map (see the module docstring), in every channel."""
  x = inputs.images
  n, h, w = x.shape[:3]
  attr = _attribution(inputs).reshape(n, h * w)
  masks = inputs.extras["xrai_masks"].reshape(n, -1, h * w)
  out = greedy(attr, masks, inputs.options.xrai_min_pixel_diff)
  return jnp.broadcast_to(out.reshape(n, h, w, 1), x.shape)
