"""What an estimator needs to know about a classifier, and the guided ReLU.

`Model` holds up to five functions of images. Any JAX function of images can
be wrapped (`Model(logits=f)`) for the methods that need only logits (the
gradient family, occlusion, RISE, LIME, KernelSHAP, XRAI); the project's Flax
models build the full set with `saliency.explainable`.

A Model may also declare the normalization of its inputs (`pixel_mean`,
`pixel_std`): then the methods that start from a baseline default to the
black image, and superpixels are computed in pixel space.

A field may be a `jax.tree_util.Partial` (a function plus its weights as pytree
leaves). `Model` is a pytree whose leaves are those weights, so the jitted
estimators take the weights as arguments: explaining a model with new weights
(for example every step of a parameter-randomization sanity check) reuses the
compiled code instead of recompiling. A plain function is static: its identity
is part of the compilation cache key.
"""

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from roar_jax.saliency import options as options_lib

Array = jax.Array
ImageFn = Callable[[Array], Array]

# The optional parts, and what each one is for (used in error messages).
PARTS = {
    "logits": "logits(images) -> [B, K]",
    "guided_logits": ("the same network with a guided ReLU, for Guided "
                      "Backprop"),
    "features": ("the network up to its last convolutional block, for "
                 "GradCAM"),
    "head": "the network after its last convolutional block, for GradCAM",
    "deeplift_logits": ("(images, references) -> logits of images whose "
                        "gradient is DeepLIFT's multiplier, for DeepLIFT and "
                        "DeepSHAP (saliency.deeplift_logits(logits) builds "
                        "it)"),
}


@dataclasses.dataclass(frozen=True)
class Model:
  """A classifier as the estimators see it.

  Attributes:
    logits: images [B, H, W, C] -> logits [B, K] (eval mode, per-example:
      the logits of one image must not depend on the others in the batch).
    guided_logits: the same network whose ReLU backward passes only positive
      gradients into positive inputs (see `guided_relu`); for Guided Backprop.
    features: images -> the activation of the last convolutional block
      [B, h, w, F]; for GradCAM.
    head: that activation -> logits, so that head(features(x)) == logits(x).
    deeplift_logits: (images, references) -> logits(images), whose gradient
      with respect to images is DeepLIFT's multiplier (Rescale rule) relative
      to references of the same shape; for `deeplift` and `deepshap`. For any
      JAX function of images made of linear layers, ReLU/max, max pooling
      and elementwise activations, `saliency.deeplift_logits(logits)` builds
      it by tracing `logits` (see `rescale.py`); a hand-written function
      with the same contract works too.
    pixel_mean, pixel_std: the normalization of the model's inputs, per
      channel or scalar: image = (pixel - mean) / std with pixels in [0, 1].
      Declared (either one; the other defaults to 0 or 1), `baseline`
      defaults to the black image (0 - mean) / std; None: the methods that
      read a baseline need `baseline=`.
    lacks: why a part is None, as (part, reason) pairs; the builder of the
      Model knows (`saliency.explainable`: 'MyMLP defines no `features`
      method'), and a method that needs the part fails with that reason.
  """
  logits: ImageFn
  guided_logits: Optional[ImageFn] = None
  features: Optional[ImageFn] = None
  head: Optional[Callable[[Array], Array]] = None
  deeplift_logits: Optional[Callable[[Array, Array], Array]] = None
  pixel_mean: Optional[tuple[float, ...]] = None
  pixel_std: Optional[tuple[float, ...]] = None
  lacks: tuple[tuple[str, str], ...] = ()

  def __post_init__(self):
    for name in NORMALIZATION:  # Tuples of floats: hashable, static.
      object.__setattr__(self, name, options_lib.statistics(
          name, getattr(self, name), "Model"))
    object.__setattr__(self, "lacks", tuple(
        (str(part), str(why)) for part, why in dict(self.lacks).items()))
    for name in PARTS:
      value = getattr(self, name)
      if name == "logits" and value is None:
        raise ValueError("Model.logits is required: a function images -> "
                         "logits [B, K]")
      if value is not None and not callable(value):
        raise ValueError(f"Model.{name} must be callable (or None), got "
                         f"{type(value).__name__}")


_FIELDS = tuple(PARTS)
# The declared normalization: static (part of the compilation cache key).
NORMALIZATION = ("pixel_mean", "pixel_std")
# Every static field after the parts.
_STATIC = NORMALIZATION + ("lacks",)


def _flatten(model: Model):
  # Partials carry weights: they are children. Anything else is static.
  children, static = [], []
  for name in _FIELDS:
    value = getattr(model, name)
    if isinstance(value, jax.tree_util.Partial):
      children.append(value)
      static.append(None)
    else:
      children.append(None)
      static.append(value)
  static.extend(getattr(model, name) for name in _STATIC)
  return tuple(children), tuple(static)


def _unflatten(static, children) -> Model:
  values = [c if s is None else s for s, c in zip(static, children)]
  model = object.__new__(Model)  # Skips validation: leaves may be tracers.
  for name, value in zip(_FIELDS + _STATIC,
                         values + list(static[len(_FIELDS):])):
    object.__setattr__(model, name, value)
  return model


jax.tree_util.register_pytree_node(Model, _flatten, _unflatten)


def require(model: Model, part: str, method: str) -> Callable[..., Any]:
  """`model.<part>`, or a ValueError that names the missing part."""
  value = getattr(model, part)
  if value is None:
    why = dict(model.lacks).get(part)
    remedy = (why if why is not None else
              "build it with roar_jax.saliency.explainable(module, variables) "
              f"or pass {part}= to saliency.Model")
    raise ValueError(f"method {method!r} needs Model.{part} ({PARTS[part]}),"
                     f" which this Model lacks: {remedy}")
  return value


@jax.custom_vjp
def guided_relu(x: Array) -> Array:
  """ReLU whose backward pass lets only positive gradients through.

  Forward: max(x, 0). Backward: g * [x > 0] * [g > 0], the rule of Guided
  Backprop (Springenberg et al., 2015): the ordinary ReLU gate on the input,
  and a second gate that drops negative gradients.
  """
  return jnp.maximum(x, 0)


def _guided_relu_fwd(x):
  return jnp.maximum(x, 0), x > 0


def _guided_relu_bwd(positive, g):
  return (jnp.where(positive & (g > 0), g, jnp.zeros_like(g)),)


guided_relu.defvjp(_guided_relu_fwd, _guided_relu_bwd)
