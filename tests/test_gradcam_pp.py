"""Grad-CAM++: the paper's formula in numpy, and closed forms against GradCAM.

- A SmallCNN: the map equals the formula computed here in float64 numpy from
  the activation and its gradient (taken with jax.grad), resized as GradCAM's.
- A global-average-pooled linear head: the gradient is v_f / Z at every
  position, so alpha_f = 1 / (2 + v_f mean(A_f)) and
  w_f = ReLU(v_f) / (2 + v_f mean(A_f)): with one feature map, Grad-CAM++ is
  GradCAM times Z / (2 + v mean(A)); with several, that closed form.
- With GradCAM in one call, the two share one gradient pass.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from roar_jax import models
from roar_jax import saliency
from roar_jax.saliency import inputs as inputs_lib

pytestmark = pytest.mark.usefixtures("fast_compiles")


def numpy_gradcam_pp(feats: np.ndarray, grads: np.ndarray) -> np.ndarray:
  """ReLU(sum_f w_f A_f) [N, h, w] of the paper's weights, in float64."""
  a, g = np.float64(feats), np.float64(grads)
  num = g ** 2
  den = 2 * g ** 2 + a.sum(axis=(1, 2), keepdims=True) * g ** 3
  alpha = np.divide(num, den, out=np.zeros_like(num), where=den != 0)
  w = np.sum(alpha * np.maximum(g, 0), axis=(1, 2))
  return np.maximum(np.einsum("nhwf,nf->nhw", a, w), 0)


@pytest.fixture(scope="module")
def small_cnn():
  """(model, images, targets): a SmallCNN with random biases, 16x16 images."""
  module = models.SmallCNN(5, width=4)
  x = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
  params = module.init(jax.random.key(1), x)["params"]
  keys = iter(jax.random.split(jax.random.key(2), len(params)))
  params = {name: {**leaf, "bias": 0.1 * jax.random.normal(
      next(keys), leaf["bias"].shape)} for name, leaf in params.items()}
  model = saliency.explainable(module, {"params": params})
  return model, np.asarray(x), np.array([0, 3, 1], np.int32)


def test_small_cnn_equals_the_formula(small_cnn):
  model, x, t = small_cnn
  maps = saliency.explain_all(model, x, methods=("gradcam", "gradcam_pp"),
                              target=t)
  feats = model.features(x)
  grads = jax.grad(lambda f: jnp.sum(inputs_lib.select(model.head(f), t)))(
      feats)
  assert np.mean(np.asarray(grads) != 0) > 0.05  # Not a degenerate case.
  cam = numpy_gradcam_pp(np.asarray(feats), np.asarray(grads))
  expected = np.asarray(jax.image.resize(
      jnp.asarray(cam, jnp.float32), x.shape[:3], method="bilinear"))
  expected = np.broadcast_to(expected[..., None], x.shape)
  ours = np.asarray(maps["gradcam_pp"])
  scale = np.abs(expected).max()
  assert scale > 0
  # Measured: 7e-8 of the largest value.
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5 * scale)
  # It ranks differently from GradCAM here (not a rescaled copy).
  grad_cam = np.asarray(maps["gradcam"])
  assert np.corrcoef(ours.ravel(), grad_cam.ravel())[0, 1] < 0.999
  # The activation and its gradient are computed once for both.
  assert saliency.gradient_passes(model, ("gradcam", "gradcam_pp"),
                                  x.shape[1:]) == 1


def _pooled_linear(u, b, v):
  """features = ReLU(x u + b) at full resolution, head = mean over space,
  then v: the gradient d logit_k / d A_ijf = v[f, k] / Z everywhere."""
  return saliency.Model(
      logits=lambda x: jnp.mean(jax.nn.relu(x @ u + b), axis=(1, 2)) @ v,
      features=lambda x: jax.nn.relu(x @ u + b),
      head=lambda a: jnp.mean(a, axis=(1, 2)) @ v)


def test_one_feature_map_is_gradcam_rescaled():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(2, 6, 5, 2)).astype(np.float32)
  u = rng.normal(size=(2, 1)).astype(np.float32)
  v = np.array([[0.7, -0.4]], np.float32)  # One map, two classes.
  model = _pooled_linear(u, np.float32([0.3]), v)
  t = np.array([0, 0], np.int32)
  maps = saliency.explain_all(model, x, methods=("gradcam", "gradcam_pp"),
                              target=t)
  mean_a = np.asarray(model.features(x)).mean(axis=(1, 2, 3))  # [N]
  z = 6 * 5
  factor = z / (2 + v[0, 0] * mean_a)  # w++ / alpha_gradcam.
  np.testing.assert_allclose(maps["gradcam_pp"],
                             factor[:, None, None, None] * maps["gradcam"],
                             rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(maps["gradcam"])).max() > 0
  # A class whose only weight is negative: GradCAM's map is ReLU of a
  # negative one, 0, and Grad-CAM++ weighs the map by ReLU(g) = 0.
  other = saliency.explain_all(model, x, methods=("gradcam", "gradcam_pp"),
                               target=np.array([1, 1], np.int32))
  assert np.abs(np.asarray(other["gradcam_pp"])).max() == 0
  assert np.abs(np.asarray(other["gradcam"])).max() == 0


def test_pooled_linear_head_closed_form():
  rng = np.random.default_rng(6)
  x = rng.normal(size=(2, 6, 6, 3)).astype(np.float32)
  u = rng.normal(size=(3, 4)).astype(np.float32)
  b = rng.normal(size=(4,)).astype(np.float32) * 0.3
  # Map 2 has weight 0 (gradient 0: the formula's 0 / 0), map 3 a negative
  # one (ReLU(g) = 0): only maps 0 and 1 count.
  v = np.array([[0.9], [0.5], [0.0], [-0.8]], np.float32)
  model = _pooled_linear(u, b, v)
  maps = np.asarray(saliency.explain(model, x, method="gradcam_pp",
                                     target=np.zeros(2, np.int32)))
  assert np.all(np.isfinite(maps))
  a = np.asarray(model.features(x), np.float64)  # [N, 6, 6, 4]
  w = np.maximum(v[:, 0], 0) / (2 + v[:, 0] * a.mean(axis=(1, 2)))  # [N, 4]
  cam = np.maximum(np.einsum("nhwf,nf->nhw", a, w), 0)
  np.testing.assert_allclose(maps, np.broadcast_to(cam[..., None], x.shape),
                             rtol=1e-5, atol=1e-6)
