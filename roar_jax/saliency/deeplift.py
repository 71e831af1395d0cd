"""DeepLIFT and DeepSHAP (docs/design.md, "Estimators of the lecture").

Both read `Model.deeplift_logits` (see `rescale.py` and `model.py`): a
function whose gradient is DeepLIFT's Rescale multiplier.
"""

import jax
import jax.numpy as jnp

from roar_jax.saliency import inputs as inputs_lib
from roar_jax.saliency import registry

Array = jax.Array


def multipliers(inputs: inputs_lib.Inputs, x: Array, x0: Array,
                targets: Array) -> Array:
  """DeepLIFT's multipliers of x relative to x0 (one pass over both)."""
  fn = inputs.part("deeplift_logits")
  inputs_lib.count_passes(int(x.shape[0]))  # The pass over the references.
  return inputs_lib.target_gradient(lambda a: fn(a, x0), x, targets)


@registry.register("deeplift", needs=("deeplift_logits",), evaluations=2,
                   baseline=True)
def deeplift(inputs: inputs_lib.Inputs) -> Array:
  """(x - x0) * DeepLIFT multiplier, Rescale rule; sums to f(x) - f(x0).

  x0 is the baseline (one image, or one per image).
  """
  def compute():
    x = inputs.images
    x0 = jnp.broadcast_to(inputs.baseline, x.shape).astype(x.dtype)
    return (x - x0) * multipliers(inputs, x, x0, inputs.targets)
  return inputs.cached("deeplift", compute)


@registry.register("deepshap", needs=("deeplift_logits",), evaluations=2,
                   references=True)
def deepshap(inputs: inputs_lib.Inputs) -> Array:
  """Mean over references x0_r of DeepLIFT relative to x0_r.

  The references are the `references=` option [R, H, W, C] (the explain
  stage passes training images); the map sums to f(x) - mean_r f(x0_r).
  References are taken in groups (a `group_loop`), so memory does not grow
  with R.
  """
  refs = inputs.shared.get("references")
  if refs is None:
    raise ValueError(f"method {inputs.method!r} needs references=[R, H, W, C]"
                     " (e.g. 16 training images in the model's input space)")
  x, targets = inputs.images, inputs.targets
  n, r = x.shape[0], refs.shape[0]
  group = min(r, inputs.group_size(rows_per_sample=2, forward_only=False))

  def body(ids, valid):
    x0 = refs[jnp.minimum(ids, r - 1)]  # [g, H, W, C]
    xs = jnp.repeat(x[None], group, axis=0).reshape((group * n,) + x.shape[1:])
    x0s = jnp.repeat(x0[:, None], n, axis=1).reshape(xs.shape)
    m = multipliers(inputs, xs, x0s, jnp.tile(targets, group))
    maps = ((xs - x0s) * m).reshape((group, n) + x.shape[1:])
    return jnp.sum(maps * valid.reshape((group, 1, 1, 1, 1)), axis=0)

  return inputs_lib.group_loop(r, group, body) / r
