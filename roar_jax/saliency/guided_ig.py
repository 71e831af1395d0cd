"""Guided Integrated Gradients (Kapishnikov et al., CVPR 2021), as PAIR's.

The path starts at the baseline x0 and reaches the image x in `steps` steps
(PAIR's `guided_ig_impl`). At step k (alpha = k / steps) the gradient g is
taken once at the current point; then, until the L1 distance to x has shrunk
to l1_total * (1 - alpha):
1. features that fell behind alpha_min = max(alpha - max_dist, 0) (in units
   of their own x0 -> x interval) are set to x_min (features with x = x0
   never are);
2. if the distance is then within tolerance of the target, the step ends;
3. otherwise features already at x_max (alpha_max = min(alpha + max_dist,
   1)) are excluded (their |g| set to inf), and every feature with
   |g| <= the `fraction` quantile of |g| over all features (numpy's 'lower'
   quantile, infinities included; ties all selected) is moved toward x_max:
   all the way if that does not close the gap (gamma > 1: repeat from 1),
   else by the fraction gamma that closes it exactly (the step ends).
Every move adds (x_new - x_old) * g to the attribution, so the map sums to
the path's Riemann sum of f(x) - f(x0).

Here all images of a chunk walk their paths together: a `lax.fori_loop` over
the steps (one gradient pass per step), and inside it a `lax.while_loop` of
the selection rounds that runs until every image's step has ended (finished
images are left unchanged).
Departures from PAIR (rounding only): PAIR keeps the path in float64 and
compares L1 distances with a tolerance of 1e-9; in float32 the tolerance is
1e-6 (relative, and absolute), a gamma below 0 (an overshoot by rounding,
where PAIR would assert) moves nothing, the points at alpha = 0 and 1 are x0
and x exactly, and an image none of whose features can move ends its step
(PAIR would loop forever).
"""

import jax
import jax.numpy as jnp
import numpy as np

from roar_jax.saliency import inputs as inputs_lib
from roar_jax.saliency import registry

Array = jax.Array


def quantile_index(count: int, fraction: float) -> int:
  """The sorted position np.quantile(a, fraction, method='lower') reads.

  Taken from numpy itself, so the rounding of fraction * (count - 1) is
  numpy's.
  """
  return int(np.quantile(np.arange(count), fraction, method="lower"))


def tolerance(dtype) -> float:
  """PAIR's 1e-9 in float64; 1e-6 (8 ulps of 1) in float32."""
  return 1e-9 if jnp.finfo(dtype).bits >= 64 else 1e-6


def _between(alpha, x0, x):
  """x0 + (x - x0) * alpha, exactly x0 at alpha 0 and x at alpha 1."""
  return jnp.where(alpha >= 1, x, x0 + (x - x0) * alpha)


def _round(state, grad, ends, k, tol):
  """One selection round of every image still in its step.

  Args:
    state: (x [N, F], attr [N, F], excluded [N, F] bool, active [N] bool).
    grad: [N, F], the gradient at the step's first point.
    ends: (x0, x_in, x_min, x_max, alpha_min, alpha_max, l1_target) with the
      feature arrays [N, F] and the scalars (l1_target [N]).
    k: the sorted position of the quantile.
    tol: the L1 tolerance.

  Returns:
    The next state.
  """
  x, attr, excluded, active = state
  x0, x_in, x_min, x_max, alpha_min, alpha_max, l1_target = ends
  diff = x_in - x0
  safe = jnp.where(diff != 0, diff, 1)
  x_alpha = jnp.where(diff != 0, (x - x0) / safe, alpha_max)
  moved = jnp.where(x_alpha < alpha_min, x_min, x)
  l1 = jnp.sum(jnp.abs(moved - x_in), axis=1)
  close = jnp.abs(l1 - l1_target) <= jnp.maximum(
      tol * jnp.maximum(jnp.abs(l1), jnp.abs(l1_target)), tol)
  excluded = excluded | (moved == x_max)
  masked = jnp.where(excluded, jnp.inf, grad)
  magnitude = jnp.abs(masked)
  threshold = jnp.sort(magnitude, axis=1)[:, k]
  chosen = (magnitude <= threshold[:, None]) & (masked != jnp.inf)
  l1_chosen = jnp.sum(jnp.where(chosen, jnp.abs(moved - x_max), 0), axis=1)
  gamma = jnp.where(l1_chosen > 0,
                    (l1 - l1_target) / jnp.where(l1_chosen > 0, l1_chosen, 1),
                    jnp.inf)
  # gamma > 1: the chosen features go all the way and another round follows;
  # otherwise they go the fraction gamma of the way and the step ends.
  far = gamma > 1
  partial = moved + (x_max - moved) * jnp.clip(gamma, 0, 1)[:, None]
  step = jnp.where(chosen, jnp.where(far[:, None], x_max, partial), moved)
  new = jnp.where(close[:, None], moved, step)
  new = jnp.where(active[:, None], new, x)
  attr = attr + (new - x) * grad
  # Nothing left to move (no chosen feature): the step cannot go on.
  go_on = active & ~close & far & (l1_chosen > 0)
  return new, attr, excluded, go_on


def guided_path(grad_fn, x_in: Array, x0: Array, steps: int, fraction: float,
                max_dist: float) -> Array:
  """Guided IG of flat images: x_in, x0 [N, F] -> attribution [N, F].

  Args:
    grad_fn: [N, F] points -> [N, F] gradients of the explained outputs.
    x_in: the images, flattened.
    x0: their baselines, flattened.
    steps: the path's steps (one gradient each).
    fraction: the fraction of features chosen per selection round.
    max_dist: the largest distance from the straight path, in alpha.

  Returns:
    The attribution, in the images' dtype.
  """
  n, f = x_in.shape
  dtype = x_in.dtype
  k = quantile_index(f, fraction)
  tol = tolerance(dtype)
  l1_total = jnp.sum(jnp.abs(x_in - x0), axis=1)

  def step(i, carry):
    x, attr = carry
    grad = grad_fn(x)
    alpha = (i + 1).astype(dtype) / steps
    alpha_min = jnp.maximum(alpha - max_dist, 0)
    alpha_max = jnp.minimum(alpha + max_dist, 1)
    ends = (x0, x_in, _between(alpha_min, x0, x_in),
            _between(alpha_max, x0, x_in), alpha_min, alpha_max,
            l1_total * (1 - alpha))
    state = (x, attr, jnp.zeros((n, f), bool), jnp.ones((n,), bool))
    # Every round but the last moves at least one feature to x_max for
    # good, so f + 2 rounds always suffice.
    x, attr, _, _ = jax.lax.while_loop(
        lambda s: jnp.any(s[3]),
        lambda s: _round(s, grad, ends, k, tol), state)
    return x, attr

  _, attr = jax.lax.fori_loop(0, steps, step, (x0, jnp.zeros_like(x_in)))
  return attr


@registry.register("guided_ig", ensemble=True, baseline=True)
def guided_ig(inputs: inputs_lib.Inputs) -> Array:
  """Guided IG from the baseline to the image (see the module docstring).

  Registered with evaluations=1: the steps are sequential, so a chunk holds
  one gradient pass per image at a time (as XRAI's loop); the passes
  counted by `gradient_passes` are the `guided_ig_steps` of every image.
  """
  x = inputs.images
  n = x.shape[0]
  opts = inputs.options
  x0 = jnp.broadcast_to(inputs.baseline, x.shape).astype(x.dtype)
  logits, targets = inputs.part("logits"), inputs.targets

  def grad_fn(points):
    return inputs_lib.target_gradient(
        logits, points.reshape(x.shape), targets).reshape(n, -1)

  attr = guided_path(grad_fn, x.reshape(n, -1), x0.reshape(n, -1),
                     opts.guided_ig_steps, opts.guided_ig_fraction,
                     opts.guided_ig_max_dist)
  # The loop body is traced once: count its other steps' passes.
  inputs_lib.count_passes(n * (opts.guided_ig_steps - 1))
  return attr.reshape(x.shape)
