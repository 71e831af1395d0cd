"""The base estimators (docs/design.md, "Base estimators").

Each is a function of an `Inputs` batch that returns maps shaped like the
images; `api.explain_all` wraps the ensemble-able ones in noise ensembles.
"""

import jax
import jax.numpy as jnp

from roar_jax.saliency import inputs as inputs_lib
from roar_jax.saliency import registry

Array = jax.Array
register = registry.register


@register("gradient", ensemble=True)
def gradient(inputs: inputs_lib.Inputs) -> Array:
  """d logit / d x."""
  return inputs.gradient()


@register("gradient_x_input", ensemble=True)
def gradient_x_input(inputs: inputs_lib.Inputs) -> Array:
  """x * d logit / d x (shares the gradient with `gradient`)."""
  return inputs.images * inputs.gradient()


def _ig_steps(options) -> int:
  return options.ig_steps


@register("integrated_gradients", ensemble=True, evaluations=_ig_steps,
          baseline=True)
def integrated_gradients(inputs: inputs_lib.Inputs) -> Array:
  """(x - x0) * mean_{k=1..m} grad(x0 + (k/m)(x - x0)).

  The right Riemann sum of Sundararajan et al. (2017), as the ROAR paper
  writes it; all m points of all images are one vectorized gradient pass.
  """
  def compute():
    x = inputs.images
    x0 = jnp.broadcast_to(inputs.baseline, x.shape).astype(x.dtype)
    m = inputs.options.ig_steps
    alphas = (jnp.arange(m, dtype=x.dtype) + 1) / m
    points = x0[None] + alphas.reshape((m,) + (1,) * x.ndim) * (x - x0)[None]
    return (x - x0) * jnp.mean(inputs.gradient_at(points), axis=0)
  return inputs.cached("integrated_gradients", compute)


@register("guided_backprop", needs=("guided_logits",), ensemble=True)
def guided_backprop(inputs: inputs_lib.Inputs) -> Array:
  """The gradient through the guided-ReLU network."""
  return inputs.guided_gradient()


def feature_gradients(inputs: inputs_lib.Inputs) -> tuple[Array, Array]:
  """(A, d logit / d A): the last convolutional block's activation [N, h, w,
  F] and the gradient of the explained logit with respect to it (computed
  once per batch, shared by the class activation maps)."""
  def compute():
    feats = inputs.part("features")(inputs.images)
    if feats.ndim != 4:
      raise ValueError(f"method {inputs.method!r}: Model.features must return"
                       f" [B, h, w, F], got shape {feats.shape}")
    return feats, inputs_lib.target_gradient(inputs.part("head"), feats,
                                             inputs.targets)
  return inputs.cached("feature_gradients", compute)


def upsample_cam(cam: Array, images: Array) -> Array:
  """A class activation map [N, h, w] bilinearly resized to the images' H x W
  and repeated over their channels: [N, H, W, C]."""
  cam = jax.image.resize(cam, images.shape[:3], method="bilinear")
  return jnp.broadcast_to(cam[..., None], images.shape).astype(images.dtype)


@register("gradcam", needs=("features", "head"))
def gradcam(inputs: inputs_lib.Inputs) -> Array:
  """GradCAM (Selvaraju et al., 2017), upsampled to the image.

  ReLU(sum_f alpha_f A_f), alpha_f = spatial mean of d logit / d A_f, where A
  is the last convolutional block's activation; bilinearly resized to H x W
  and repeated over the image's channels.
  """
  def compute():
    feats, grads = feature_gradients(inputs)
    alpha = jnp.mean(grads, axis=(1, 2))
    cam = jax.nn.relu(jnp.einsum("nhwf,nf->nhw", feats, alpha))
    return upsample_cam(cam, inputs.images)
  return inputs.cached("gradcam", compute)


@register("guided_gradcam", needs=("guided_logits", "features", "head"),
          evaluations=2)
def guided_gradcam(inputs: inputs_lib.Inputs) -> Array:
  """GradCAM times Guided Backprop (each shared with its own method)."""
  return gradcam(inputs) * guided_backprop(inputs)
