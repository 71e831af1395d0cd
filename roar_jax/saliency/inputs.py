"""`Inputs`: one batch as an estimator function sees it, with shared gradients.

Estimators run inside one jitted call. Several of them need the same gradient
(`gradient` and `gradient_x_input`; `guided_backprop` and `guided_gradcam`);
`Inputs` computes each such quantity once per batch and hands the same traced
value to every estimator that asks.
"""

import contextlib
from typing import Callable, Iterator, Optional

import jax
import jax.numpy as jnp

from roar_jax.saliency import model as model_lib
from roar_jax.saliency import options as options_lib

Array = jax.Array


def select(logits: Array, targets: Array) -> Array:
  """logits[n, targets[n]] for every n: the outputs being explained."""
  return jnp.take_along_axis(logits, targets[:, None].astype(jnp.int32),
                             axis=1)[:, 0]


# Open `counting_passes` counters; every traced `target_gradient` adds its
# rows to each of them.
_PASS_COUNTERS: list[list[int]] = []


@contextlib.contextmanager
def counting_passes() -> Iterator[list[int]]:
  """Counts the gradient passes (rows differentiated) traced inside the block.

  Yields:
    A one-element list whose item is the count so far. Counting happens when
    a function is traced, so trace fresh (e.g. `jax.eval_shape`) inside.
  """
  counter = [0]
  _PASS_COUNTERS.append(counter)
  try:
    yield counter
  finally:
    _PASS_COUNTERS.remove(counter)


def target_gradient(fn: Callable[[Array], Array], images: Array,
                    targets: Array) -> Array:
  """d fn(images)[n, targets[n]] / d images[n], for every n at once.

  One backward pass of the summed selected outputs gives every per-image
  gradient, because the model treats images independently (eval mode).
  """
  for counter in _PASS_COUNTERS:
    counter[0] += int(images.shape[0])
  return jax.grad(lambda x: jnp.sum(select(fn(x), targets)))(images)


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
    baseline: the integrated-gradients baseline, broadcastable to images.
    method: the name of the method being computed (for error messages).
  """

  def __init__(self, model: model_lib.Model, images: Array,
               targets: Optional[Array], keys: Array,
               options: options_lib.Options, baseline: Array):
    self.model = model
    self.images = images
    self._targets = targets
    self.keys = keys
    self.options = options
    self.baseline = baseline
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
