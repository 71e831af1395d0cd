"""`Inputs`: one batch as an estimator function sees it, with shared gradients.

Estimators run inside one jitted call. Several of them need the same gradient
(`gradient` and `gradient_x_input`; `guided_backprop` and `guided_gradcam`);
`Inputs` computes each such quantity once per batch and hands the same traced
value to every estimator that asks.
"""

import contextlib
from typing import Any, Callable, Iterator, Optional

import jax
import jax.numpy as jnp

from roar_jax.saliency import model as model_lib
from roar_jax.saliency import options as options_lib

Array = jax.Array


def select(logits: Array, targets: Array) -> Array:
  """logits[n, targets[n]] for every n: the outputs being explained."""
  return jnp.take_along_axis(logits, targets[:, None].astype(jnp.int32),
                             axis=1)[:, 0]


# Open `counting_passes` counters; every traced `target_gradient` and
# `target_logits` adds its rows to each of them, times the trip count of the
# `group_loop`s it is traced in.
_PASS_COUNTERS: list[list[float]] = []
_TRIPS = [1.0]


@contextlib.contextmanager
def counting_passes() -> Iterator[list[float]]:
  """Counts the model passes (rows evaluated) traced inside the block.

  A gradient pass (forward + backward) and a forward-only evaluation of a
  perturbation method each count one per row.

  Yields:
    A one-element list whose item is the count so far. Counting happens when
    a function is traced, so trace fresh (e.g. `jax.eval_shape`) inside.
  """
  counter = [0.0]
  _PASS_COUNTERS.append(counter)
  try:
    yield counter
  finally:
    _PASS_COUNTERS.remove(counter)


def count_passes(rows: int) -> None:
  """Adds `rows` model passes to the open `counting_passes` counters."""
  for counter in _PASS_COUNTERS:
    counter[0] += rows * _TRIPS[-1]


def target_gradient(fn: Callable[[Array], Array], images: Array,
                    targets: Array) -> Array:
  """d fn(images)[n, targets[n]] / d images[n], for every n at once.

  One backward pass of the summed selected outputs gives every per-image
  gradient, because the model treats images independently (eval mode).
  """
  count_passes(int(images.shape[0]))
  return jax.grad(lambda x: jnp.sum(select(fn(x), targets)))(images)


def target_logits(fn: Callable[[Array], Array], images: Array,
                  targets: Array) -> Array:
  """fn(images)[n, targets[n]]: one forward pass, counted."""
  count_passes(int(images.shape[0]))
  return select(fn(images), targets)


def group_loop(total: int, group: int, body: Callable[[Array, Array], Any]):
  """Sum over ceil(total / group) groups of body(ids [group], valid [group]).

  Sample ids run 0..total-1; the last group is padded with ids >= total whose
  `valid` is False (the body must zero their contribution). One `lax.scan`, so
  memory is that of one group whatever `total` is. Passes traced in the body
  count `total / group` times (see `counting_passes`).
  """
  group = max(1, min(group, total))
  trips = -(-total // group)

  def step(acc, start):
    ids = start + jnp.arange(group, dtype=jnp.int32)
    out = body(ids, ids < total)
    return jax.tree.map(jnp.add, acc, out), None

  _TRIPS.append(0.0)  # Tracing for the shapes only: counts nothing.
  try:
    shapes = jax.eval_shape(body, jnp.zeros((group,), jnp.int32),
                            jnp.zeros((group,), bool))
  finally:
    _TRIPS.pop()
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  _TRIPS.append(_TRIPS[-1] * total / group)
  try:
    acc, _ = jax.lax.scan(step, zeros,
                          jnp.arange(trips, dtype=jnp.int32) * group)
  finally:
    _TRIPS.pop()
  return acc


class Inputs:
  """The images an estimator explains, and what it may use to do so.

  Attributes:
    model: the `saliency.Model`.
    images: [N, H, W, C] float32, in the model's input space (for a noise
      ensemble: the noisy copies).
    targets: [N] int32, the class whose logit is explained per image (None
      for a batch explained only by model-free controls).
    keys: [N] PRNG keys, one per image, derived from the run key and the
      image's index (so they do not depend on the batch an image is in).
    options: the static `Options`.
    baseline: [N, H, W, C], each image's baseline (integrated gradients,
      DeepLIFT, the fill of the perturbation methods).
    extras: per-image arrays [N, ...] that estimators prepared on the host
      (e.g. 'segments'), see `registry.register(prepare=...)`.
    shared: arrays for every image (e.g. DeepSHAP's 'references').
    method: the name of the method being computed (for error messages).
  """

  def __init__(self, model: model_lib.Model, images: Array,
               targets: Optional[Array], keys: Array,
               options: options_lib.Options, baseline: Array,
               extras: Optional[dict] = None, shared: Optional[dict] = None):
    self.model = model
    self.images = images
    self._targets = targets
    self.keys = keys
    self.options = options
    self.baseline = baseline
    self.extras = extras or {}
    self.shared = shared or {}
    self.method = "?"
    self._memo = {}

  @property
  def targets(self) -> Array:
    if self._targets is None:
      raise ValueError(f"method {self.method!r} reads targets, but it was "
                       "registered with model_free=True")
    return self._targets

  def part(self, name: str) -> Callable[..., Array]:
    """The model part `name`, or a ValueError that names it."""
    return model_lib.require(self.model, name, self.method)

  def cached(self, name: str, compute: Callable[[], Array]) -> Array:
    """compute() the first time `name` is asked for in this batch."""
    if name not in self._memo:
      self._memo[name] = compute()
    return self._memo[name]

  def group_size(self, rows_per_sample: int = 1,
                 forward_only: bool = True) -> int:
    """Samples per image in one step of a `group_loop` over this batch.

    Forward-only evaluations take 4 times the `evaluations_per_step` budget
    of gradient passes: no activations are kept for a backward pass.
    """
    budget = self.options.evaluations_per_step or (
        options_lib.default_evaluations_per_step())
    budget *= 4 if forward_only else 1
    return max(1, budget // (self.images.shape[0] * rows_per_sample))

  def predicted(self) -> Array:
    """The explained logit of every image, f(x) [N] (computed once)."""
    return self.cached("target_logits", lambda: target_logits(
        self.part("logits"), self.images, self.targets))

  def image_keys(self, stream: int) -> Array:
    """[N] keys of one random stream of the images."""
    return jax.vmap(lambda k: jax.random.fold_in(k, stream))(self.keys)

  def gradient(self) -> Array:
    """d logit_target / d images (computed once per batch)."""
    return self.cached("gradient", lambda: target_gradient(
        self.part("logits"), self.images, self.targets))

  def guided_gradient(self) -> Array:
    """The same gradient through `guided_logits` (Guided Backprop)."""
    return self.cached("guided_gradient", lambda: target_gradient(
        self.part("guided_logits"), self.images, self.targets))

  def gradient_at(self, points: Array,
                  fn: Optional[Callable[[Array], Array]] = None) -> Array:
    """Gradients at other points, each explaining its own image's target.

    Args:
      points: [S, N, H, W, C]: S points per image (e.g. an IG path).
      fn: the logits function (default: model.logits).

    Returns:
      [S, N, H, W, C] gradients, all S x N in one vectorized pass.
    """
    fn = fn or self.part("logits")
    s, n = points.shape[:2]
    flat = points.reshape((s * n,) + points.shape[2:])
    grads = target_gradient(fn, flat, jnp.tile(self.targets, s))
    return grads.reshape(points.shape)
