"""Grad-CAM++ (Chattopadhay et al., 2018), upsampled to the image.

With A the last convolutional block's activation [h, w, F] and g = d logit /
d A, the paper weights each position of feature map f by

  alpha_ijf = g_ijf^2 / (2 g_ijf^2 + (sum_ab A_abf) g_ijf^3)

(0 where the denominator is 0), the second and third derivatives of its
exp(logit) score being powers of the first, and each feature map by
w_f = sum_ij alpha_ijf ReLU(g_ijf). The map is ReLU(sum_f w_f A_f), resized
to the image bilinearly and repeated over its channels as GradCAM's is
(`estimators.upsample_cam`); the activation and its gradient are GradCAM's
too (`estimators.feature_gradients`: one pass serves both).
"""

import jax
import jax.numpy as jnp

from roar_jax.saliency import estimators
from roar_jax.saliency import inputs as inputs_lib
from roar_jax.saliency import registry

Array = jax.Array


def weights(feats: Array, grads: Array) -> Array:
  """w_f = sum_ij alpha_ijf ReLU(g_ijf) of every image [N, F].

  Args:
    feats: A [N, h, w, F].
    grads: g = d logit / d A, [N, h, w, F].

  Returns:
    [N, F] weights.
  """
  total = jnp.sum(feats, axis=(1, 2), keepdims=True)  # sum_ab A_ab, per f.
  # alpha = g^2 / (g^2 (2 + S g)) = 1 / (2 + S g) where g != 0: the same
  # value without g^2 and g^3, which underflow in float32 for small
  # gradients. Where g = 0 the formula's alpha is 0 / 0, taken as 0; either
  # way ReLU(g) = 0 there.
  den = 2.0 + total * grads
  ok = (grads != 0) & (den != 0)
  alpha = jnp.where(ok, 1.0 / jnp.where(ok, den, 1.0), 0.0)
  return jnp.sum(alpha * jax.nn.relu(grads), axis=(1, 2))


@registry.register("gradcam_pp", needs=("features", "head"))
def gradcam_pp(inputs: inputs_lib.Inputs) -> Array:
  """Grad-CAM++: ReLU(sum_f w_f A_f), upsampled as GradCAM's map."""
  feats, grads = estimators.feature_gradients(inputs)
  cam = jax.nn.relu(jnp.einsum("nhwf,nf->nhw", feats, weights(feats, grads)))
  return estimators.upsample_cam(cam, inputs.images)
