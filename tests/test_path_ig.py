"""Guided IG and Blur IG: PAIR saliency's maps, closed forms, completeness.

The reference maps (tests/references/path_ig.npz, made by make_path_ig.py)
are PAIR's GuidedIG and BlurIG run with a callback into the same
models.SmallCNN whose weights the npz holds (and Guided IG of a quadratic
model with tied gradients); PAIR computes in float64 around the models'
float32 gradients, roar_jax in float32 throughout.
"""

import pathlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from roar_jax import models
from roar_jax import saliency
from roar_jax.saliency import blur_ig
from roar_jax.saliency import guided_ig

# Small models compiled many times over: XLA's optimizations cost more than
# they save.
pytestmark = pytest.mark.usefixtures("fast_compiles")

REFERENCE = pathlib.Path(__file__).with_name("references") / "path_ig.npz"
KEY = jax.random.key(3)


@pytest.fixture(scope="module")
def reference():
  """(model, npz arrays): the reference's SmallCNN with its stored weights."""
  ref = dict(np.load(REFERENCE))
  weights = {k[len("weights/"):]: v for k, v in ref.items()
             if k.startswith("weights/")}
  variables = flax.traverse_util.unflatten_dict(weights, sep="/")
  model = saliency.explainable(models.SmallCNN(4, width=2), variables)
  return model, ref


def _guided_options(ref):
  steps, fraction, max_dist = ref["guided_options"]
  return dict(guided_ig_steps=int(steps), guided_ig_fraction=float(fraction),
              guided_ig_max_dist=float(max_dist))


def _blur_options(ref):
  steps, max_sigma, grad_step = ref["blur_options"]
  return dict(blur_ig_steps=int(steps), blur_ig_max_sigma=float(max_sigma),
              blur_ig_grad_step=float(grad_step))


def _relative_error(maps, expected) -> float:
  """Largest |difference| over the largest |expected| value."""
  maps = np.asarray(maps, np.float64)
  return float(np.abs(maps - expected).max() / np.abs(expected).max())


def test_guided_ig_equals_pair(reference):
  model, ref = reference
  # Image 0 has pixels equal to its black baseline, image 2 a baseline of
  # its own that equals the image on a quarter: PAIR's NaN alphas.
  maps = saliency.explain(model, ref["images"], method="guided_ig",
                          target=ref["targets"], baseline=ref["baselines"],
                          **_guided_options(ref))
  # Measured: 5.7e-7 (float32 against PAIR's float64 path).
  assert _relative_error(maps, ref["guided_ig"]) <= 1e-4
  np.testing.assert_allclose(maps, ref["guided_ig"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("setting", [0, 1])
def test_guided_ig_equals_pair_with_tied_gradients(reference, setting):
  # A quadratic model whose gradients a x + c take few values: whole groups
  # of features tie at the quantile and are moved together.
  _, ref = reference
  a, c = ref["ties_a"], ref["ties_c"]
  model = saliency.Model(logits=lambda x: jnp.einsum(
      "nhwc,khwc->nk", 0.5 * x * x, a) + jnp.einsum("nhwc,khwc->nk", x, c))
  steps, fraction, max_dist = ref[f"ties_options_{setting}"]
  maps = saliency.explain(model, ref["ties_images"], method="guided_ig",
                          target=ref["ties_targets"], baseline=0.0,
                          guided_ig_steps=int(steps),
                          guided_ig_fraction=float(fraction),
                          guided_ig_max_dist=float(max_dist))
  expected = ref[f"ties_guided_ig_{setting}"]
  # Measured: 8.8e-8 and 2.1e-7 (largest difference / largest value).
  assert _relative_error(maps, expected) <= 1e-4
  np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-6)


def test_blur_ig_equals_pair(reference):
  model, ref = reference
  maps = saliency.explain(model, ref["images"], method="blur_ig",
                          target=ref["targets"], **_blur_options(ref))
  # Measured: 1.0e-7 (float32 against PAIR's float64 blurs).
  assert _relative_error(maps, ref["blur_ig"]) <= 1e-4
  np.testing.assert_allclose(maps, ref["blur_ig"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("sigma", [0.0, 0.01, 0.3, 1.7, 6.0, 50.0])
def test_blur_equals_scipy_constant_mode(sigma):
  x = np.random.default_rng(2).uniform(size=(2, 9, 13, 3))
  expected = np.stack([ndimage.gaussian_filter(
      a, (sigma, sigma, 0), mode="constant") for a in x])
  got = blur_ig.blur(jnp.asarray(x, jnp.float32), sigma)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def _linear_model(weights):
  """A Model whose logits are linear in the image: w_k . x + k."""
  w = jnp.asarray(weights)

  def logits(x):
    return jnp.einsum("nhwc,khwc->nk", x, w) + jnp.arange(w.shape[0])

  return saliency.Model(logits=logits)


def test_guided_ig_on_a_linear_model_is_exact_ig():
  # The gradient is w everywhere: every path from x0 to x gives w (x - x0),
  # whatever the fraction and the distance from the straight line.
  rng = np.random.default_rng(4)
  w = rng.normal(size=(3, 6, 5, 2)).astype(np.float32)
  x = rng.uniform(size=(4, 6, 5, 2)).astype(np.float32)
  x0 = rng.uniform(size=(4, 6, 5, 2)).astype(np.float32)
  t = np.array([0, 1, 2, 1], np.int32)
  model = _linear_model(w)
  expected = w[t] * (x - x0)
  for fraction, max_dist in ((0.25, 0.02), (0.1, 1.0)):
    maps = saliency.explain(model, x, method="guided_ig", target=t,
                            baseline=x0, guided_ig_steps=10,
                            guided_ig_fraction=fraction,
                            guided_ig_max_dist=max_dist)
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-6)
  # The noise ensembles draw the same noisy copies for every base: on a
  # linear model SmoothGrad of Guided IG is SmoothGrad of IG.
  both = saliency.explain_all(
      model, x, methods=("sg.guided_ig", "sg.integrated_gradients"),
      key=KEY, target=t, baseline=x0, guided_ig_steps=5, num_samples=3)
  np.testing.assert_allclose(both["sg.guided_ig"],
                             both["sg.integrated_gradients"], rtol=1e-5,
                             atol=1e-6)


def test_blur_ig_noise_ensemble_on_a_linear_model():
  # On a linear model Blur IG is linear in the image, so SmoothGrad of it
  # is Blur IG of the mean noisy image, which SmoothGrad of IG reveals:
  # sg.integrated_gradients = w (mean noisy x - 0).
  rng = np.random.default_rng(8)
  w = (rng.choice([-1, 1], size=(2, 6, 5, 2)) *
       rng.uniform(0.5, 1.5, size=(2, 6, 5, 2))).astype(np.float32)
  x = rng.uniform(size=(3, 6, 5, 2)).astype(np.float32)
  t = np.array([0, 1, 1], np.int32)
  model = _linear_model(w)
  options = dict(target=t, blur_ig_steps=6, blur_ig_max_sigma=3.0)
  both = saliency.explain_all(
      model, x, methods=("sg.blur_ig", "sg.integrated_gradients"), key=KEY,
      baseline=0.0, num_samples=3, **options)
  mean_noisy = np.asarray(both["sg.integrated_gradients"]) / w[t]
  expected = saliency.explain(model, mean_noisy, method="blur_ig", **options)
  np.testing.assert_allclose(both["sg.blur_ig"], expected, rtol=1e-4,
                             atol=1e-6)


def test_guided_ig_on_the_straight_line_is_left_riemann_ig(reference):
  # max_dist = 0 holds every feature at alpha = k / m at step k: the
  # straight path, each step weighted by the gradient at its start.
  model, ref = reference
  x, x0, t = ref["images"], ref["baselines"], ref["targets"]
  m = 8
  maps = saliency.explain(model, x, method="guided_ig", target=t,
                          baseline=x0, guided_ig_steps=m,
                          guided_ig_max_dist=0.0)
  points = np.concatenate([x0 + k / m * (x - x0) for k in range(m)])
  targets = np.tile(t, m)[:, None]
  grads = jax.jit(jax.grad(lambda a: jnp.sum(jnp.take_along_axis(
      model.logits(a), targets, 1))))(points)
  mean = np.mean(np.asarray(grads).reshape((m,) + x.shape), axis=0)
  np.testing.assert_allclose(maps, (x - x0) * mean, rtol=1e-4, atol=1e-6)


def _smooth_images(seed, count=3):
  """Blurred noise, stretched to about [-1, 2]: a smooth blur path."""
  noise = np.random.default_rng(seed).uniform(size=(count, 16, 16, 3))
  x = np.stack([ndimage.gaussian_filter(a, (1.5, 1.5, 0)) for a in noise])
  return ((x - x.mean()) * 4 + 0.5).astype(np.float32)


def _completeness_error(model, x, t, steps):
  """|sum of Blur IG's map - (f(x) - f(blur(x, 4)))| / sum of |map|."""
  maps = saliency.explain(model, x, method="blur_ig", target=t,
                          blur_ig_steps=steps, blur_ig_max_sigma=4.0)
  f = lambda a: np.take_along_axis(np.asarray(model.logits(a)), t[:, None],
                                   1)[:, 0]
  delta = f(x) - f(blur_ig.blur(jnp.asarray(x), 4.0))
  maps = np.asarray(maps)
  return np.abs(np.sum(maps, axis=(1, 2, 3)) - delta) / np.sum(
      np.abs(maps), axis=(1, 2, 3))


def test_blur_ig_completeness(reference):
  # The map sums to f(x) - f(blur(x, max_sigma)) up to the left Riemann
  # error of the sigma path, O(Delta sigma) (and the forward difference's
  # O(h)); errors are relative to the map's total |attribution| (f(x) -
  # f(blur) itself can cancel to near 0). Measured with Delta sigma = 1/16:
  # 0.094% on the CNN, 0.030% on a linear model; 0.0079% there with 1/64.
  model, ref = reference
  t = ref["targets"]
  assert np.all(_completeness_error(model, _smooth_images(5), t, 64) <= 3e-3)
  w = np.random.default_rng(6).normal(size=(4, 16, 16, 3)).astype(np.float32)
  linear, x = _linear_model(w), _smooth_images(4)
  coarse = _completeness_error(linear, x, t, 64)
  fine = _completeness_error(linear, x, t, 256)
  assert np.all(coarse <= 6e-4) and np.all(fine <= 1.5e-4)
  assert np.all(fine <= coarse / 2)  # It shrinks with Delta sigma.


def test_gradient_passes_and_guards(reference):
  model, _ = reference
  count = lambda m, **o: saliency.gradient_passes(model, (m,), (16, 16, 3),
                                                  **o)
  assert count("guided_ig", guided_ig_steps=7) == 7
  assert count("blur_ig", blur_ig_steps=9) == 9
  assert guided_ig.quantile_index(768, 0.25) == 191  # floor(0.25 * 767).
  # Guided IG starts from a baseline: neither given nor declared.
  with pytest.raises(ValueError, match="baseline"):
    saliency.explain(model, np.ones((1, 16, 16, 3), np.float32),
                     method="guided_ig")
