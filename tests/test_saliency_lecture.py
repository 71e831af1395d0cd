"""The lecture's estimators: values against hand computations, and errors.

DeepLIFT against a hand-written Rescale pass, summation to delta on every
project model, DeepSHAP's sum, occlusion, RISE and KernelSHAP on linear models,
KernelSHAP's exact Shapley values, baselines per image, bad options.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from roar_jax import models
from roar_jax import saliency
from roar_jax.saliency import model as model_lib
from roar_jax.saliency import perturbation

# Small models compiled many times over: XLA's optimizations cost more than
# they save (a ResNet's initializer takes half a minute to optimize on 2 cores).
pytestmark = pytest.mark.usefixtures("fast_compiles")

KEY = jax.random.key(7)


def _target_logit(model, x, t):
  return np.asarray(jnp.take_along_axis(model.logits(x), t[:, None], 1)[:, 0])


# ---------------------------------------------------------------------------
# DeepLIFT and DeepSHAP.


def _mlp_params(rng, sizes):
  return [(rng.normal(size=(a, b)).astype(np.float32) / np.sqrt(a),
           rng.normal(size=(b,)).astype(np.float32) * 0.5)
          for a, b in zip(sizes[:-1], sizes[1:])]


def _mlp(params, x):
  h = x.reshape(x.shape[0], -1)
  for i, (w, b) in enumerate(params):
    h = h @ w + b
    if i < len(params) - 1:
      h = jax.nn.relu(h)
  return h


def _hand_deeplift(params, x, x0, t):
  """Rescale DeepLIFT in numpy: forward both, multipliers backward."""
  h, h0, slopes = x.reshape(len(x), -1), x0.reshape(len(x0), -1), []
  for i, (w, b) in enumerate(params):
    z, z0 = h @ w + b, h0 @ w + b
    if i < len(params) - 1:
      dz = z - z0
      safe = np.where(np.abs(dz) < 1e-6, 1.0, dz)
      slopes.append(np.where(np.abs(dz) < 1e-6, (z > 0).astype(np.float32),
                             (np.maximum(z, 0) - np.maximum(z0, 0)) / safe))
      h, h0 = np.maximum(z, 0), np.maximum(z0, 0)
  m = np.eye(params[-1][0].shape[1], dtype=np.float32)[t]  # [N, K]
  for i in range(len(params) - 1, -1, -1):
    m = m @ params[i][0].T
    if i > 0:
      m = m * slopes[i - 1]
  return ((x - x0).reshape(len(x), -1) * m).reshape(x.shape)


@pytest.mark.parametrize("nonzero", [False, True])
def test_deeplift_equals_hand_rescale_on_mlp(nonzero):
  rng = np.random.default_rng(1)
  params = _mlp_params(rng, [12, 16, 8, 3])
  x = rng.normal(size=(5, 2, 3, 2)).astype(np.float32)
  x0 = (rng.normal(size=(2, 3, 2)).astype(np.float32) if nonzero
        else np.zeros((2, 3, 2), np.float32))
  logits = lambda a: _mlp(params, a)
  model = saliency.Model(logits=logits,
                         deeplift_logits=saliency.deeplift_logits(logits))
  t = np.array([0, 1, 2, 0, 1], np.int32)
  maps = saliency.explain(model, x, method="deeplift", target=t, baseline=x0)
  expected = _hand_deeplift(params, x, np.broadcast_to(x0, x.shape), t)
  np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-6)
  # Not the gradient times input: the biases and the reference matter.
  g = saliency.explain(model, x, method="gradient_x_input", target=t)
  assert np.abs(np.asarray(g) - expected).max() > 1e-3


def _perturbed(variables, scale=0.3):
  """Random offsets on every leaf: non-zero biases, BatchNorm statistics and
  scales, so no network is homogeneous (where DeepLIFT = gradient x input).

  Drawn in numpy: a ResNet has a hundred leaf shapes, and one jax.random call
  per shape compiles a program each (24 s for a ResNet18 on 2 cores).
  """
  rng = np.random.default_rng(3)
  return jax.tree.map(
      lambda l: np.asarray(l) + scale * rng.uniform(size=l.shape).astype(
          l.dtype), variables)


def _init(module, x):
  """The module's variables, initialized in one compiled call (op by op, a
  ResNet18's initializer takes 29 s on 2 cores; compiled, 3 s without most
  XLA optimizations, see `fast_compiles`)."""
  return jax.jit(module.init)(jax.random.key(0), x)


PROJECT_MODELS = {
    "small_cnn": (lambda: models.SmallCNN(4, width=4), (8, 8, 3)),
    "sanity_cnn": (lambda: models.SanityCNN(4), (8, 8, 1)),
    "sanity_mlp": (lambda: models.SanityMLP(4, hidden=(16, 8)), (6, 6, 1)),
    "resnet18": (lambda: models.ResNet18(4, width=2, stem="imagenet"),
                 (16, 16, 3)),
    "resnet50": (lambda: models.ResNet50(4, width=2, stem="cifar"),
                 (8, 8, 3)),
}


@pytest.mark.parametrize("name", sorted(PROJECT_MODELS))
def test_deeplift_sums_to_delta_on_project_models(name):
  build, shape = PROJECT_MODELS[name]
  module = build()
  x = jax.random.normal(jax.random.key(1), (2,) + shape)
  x0 = 0.5 * jax.random.normal(jax.random.key(2), (2,) + shape)
  model = saliency.explainable(module, _perturbed(_init(module, x)))
  t = np.array([1, 3], np.int32)
  maps = saliency.explain(model, x, method="deeplift", target=t, baseline=x0)
  delta = _target_logit(model, x, t) - _target_logit(model, x0, t)
  total = np.asarray(maps).sum(axis=(1, 2, 3))
  scale = np.abs(_target_logit(model, x, t)) + np.abs(
      _target_logit(model, x0, t))
  assert np.all(np.abs(total - delta) <= 1e-3 * scale), (total, delta)


def test_deeplift_max_pool_rule_sums_to_delta():
  """flax max_pool (overlapping, padded) under the Rescale rewrite."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  w = jax.random.normal(jax.random.key(0), (3, 3, 2, 4))

  def logits(x):
    h = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO",
                                                        "NHWC"))
    h = nn.max_pool(jax.nn.relu(h + 0.1), (3, 3), (2, 2), padding="SAME")
    return jnp.max(h, axis=(1, 2))  # reduce_max too.

  x = jax.random.normal(jax.random.key(1), (3, 8, 8, 2))
  x0 = jax.random.normal(jax.random.key(2), (3, 8, 8, 2))
  model = saliency.Model(logits=logits,
                         deeplift_logits=saliency.deeplift_logits(logits))
  t = np.array([0, 1, 3], np.int32)
  maps = saliency.explain(model, x, method="deeplift", target=t, baseline=x0)
  delta = _target_logit(model, x, t) - _target_logit(model, x0, t)
  np.testing.assert_allclose(np.asarray(maps).sum(axis=(1, 2, 3)), delta,
                             rtol=1e-4, atol=1e-5)


def test_deepshap_sums_to_mean_delta_and_groups_do_not_matter():
  build, shape = PROJECT_MODELS["small_cnn"]
  module = build()
  x = jax.random.normal(jax.random.key(1), (3,) + shape)
  refs = jax.random.normal(jax.random.key(5), (5,) + shape)
  model = saliency.explainable(module, _perturbed(_init(module, x)))
  t = np.array([0, 2, 3], np.int32)
  maps = saliency.explain(model, x, method="deepshap", target=t,
                          references=refs)
  f0 = np.mean([_target_logit(model, jnp.broadcast_to(r, x.shape), t)
                for r in refs], axis=0)
  delta = _target_logit(model, x, t) - f0
  np.testing.assert_allclose(np.asarray(maps).sum(axis=(1, 2, 3)), delta,
                             rtol=1e-3, atol=1e-4)
  # The mean of the per-reference DeepLIFT maps, whatever the grouping.
  each = [saliency.explain(model, x, method="deeplift", target=t, baseline=r)
          for r in refs]
  small = saliency.explain(model, x, method="deepshap", target=t,
                           references=refs, evaluations_per_step=2)
  np.testing.assert_allclose(maps, np.mean(each, axis=0), rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(small, maps, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------
# Linear models: occlusion and KernelSHAP.


def _linear(w):
  return saliency.Model(logits=lambda x: jnp.stack(
      [jnp.sum(x * w, axis=(1, 2, 3)), -jnp.sum(x * w, axis=(1, 2, 3))], -1))


@pytest.fixture(scope="module")
def linear():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(6, 6, 2)).astype(np.float32)
  x = rng.normal(size=(3, 6, 6, 2)).astype(np.float32)
  return _linear(jnp.asarray(w)), w, x


def test_occlusion_1x1_on_linear_model(linear):
  model, w, x = linear
  x0 = np.float32(0.25)
  maps = saliency.explain(model, x, method="occlusion", occlusion_window=1,
                          target=np.zeros(3, np.int32), baseline=x0)
  per_pixel = ((x - x0) * w).sum(axis=-1, keepdims=True)
  np.testing.assert_allclose(maps, np.broadcast_to(per_pixel, x.shape),
                             rtol=1e-4, atol=1e-5)


def test_occlusion_windows_cover_the_image(linear):
  model, w, x = linear
  maps = saliency.explain(model, x, method="occlusion", occlusion_window=4,
                          occlusion_stride=3, target=np.zeros(3, np.int32),
                          baseline=0.0)
  # Windows at 0 and 2 (the last meets the edge): pixel (0, 0) is in one.
  one = (x[:, :4, :4] * w[:4, :4]).sum(axis=(1, 2, 3))
  np.testing.assert_allclose(maps[:, 0, 0, 0], one, rtol=1e-4)


@pytest.mark.parametrize("probabilities", [True, False])
def test_rise_scores_class_probabilities_by_default(linear, probabilities):
  model, w, x = linear
  x0, masks_n, keep = np.float32(0.5), 16, 0.5
  options = {} if probabilities else dict(rise_probabilities=False)
  maps = np.asarray(saliency.explain(
      model, x, method="rise", key=KEY, target=np.zeros(3, np.int32),
      baseline=x0, rise_masks=masks_n, rise_cells=2, **options))
  for i in range(3):
    image_key = jax.random.fold_in(jax.random.fold_in(KEY, i),
                                   perturbation.RISE_STREAM)
    masks = np.asarray(perturbation.rise_masks(
        image_key, jnp.arange(masks_n), 6, 6, 2, keep))  # [N, H, W]
    copies = x0 + masks[..., None] * (x[i] - x0)
    z = (copies * w).sum(axis=(1, 2, 3)).astype(np.float64)
    # The model's logits are (z, -z): the probability of class 0 is
    # sigmoid(2 z), as the paper scores; the logit is z.
    score = 1 / (1 + np.exp(-2 * z)) if probabilities else z
    expected = np.einsum("n,nhw->hw", score, masks) / (masks_n * keep)
    np.testing.assert_allclose(maps[i, ..., 0], expected, rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_array_equal(maps[i, ..., 0], maps[i, ..., 1])


def _grid_segments(h, w, cell):
  rows, cols = np.meshgrid(np.arange(h) // cell, np.arange(w) // cell,
                           indexing="ij")
  return (rows * (-(-w // cell)) + cols).astype(np.int32)


@pytest.mark.parametrize("samples", [1000, 40])  # Exact, then sampled.
def test_kernel_shap_on_linear_model(linear, samples):
  model, w, x = linear
  x0 = np.float32(-0.5)
  segments = _grid_segments(6, 6, 2)  # 9 segments: 510 coalitions.
  maps = saliency.explain(model, x, method="kernel_shap", key=KEY,
                          target=np.zeros(3, np.int32), baseline=x0,
                          segments=segments, shap_samples=samples)
  maps = np.asarray(maps)
  delta = ((x - x0) * w).sum(axis=(1, 2, 3))
  np.testing.assert_allclose(maps.sum(axis=(1, 2, 3)), delta, rtol=1e-4,
                             atol=1e-4)
  for s in range(9):
    inside = segments == s
    exact = ((x - x0) * w)[:, inside].sum(axis=(1, 2))
    np.testing.assert_allclose(maps[:, inside].sum(axis=(1, 2)), exact,
                               rtol=1e-3, atol=1e-3)
    # Spread evenly over the segment's pixels and channels.
    values = maps[:, inside]
    np.testing.assert_allclose(values, np.broadcast_to(values[:, :1],
                                                       values.shape),
                               rtol=1e-5, atol=1e-6)


def test_kernel_shap_is_exact_shapley_on_nonlinear_model():
  """Few segments: every coalition enumerated, so the Shapley values."""
  segments = _grid_segments(4, 4, 2)  # 4 segments.

  def logits(x):
    s = jnp.stack([jnp.sum(x[:, 2 * (k // 2):2 * (k // 2) + 2,
                             2 * (k % 2):2 * (k % 2) + 2], axis=(1, 2, 3))
                   for k in range(4)], -1)
    y = s[:, 0] * s[:, 1] + jnp.tanh(s[:, 2]) * s[:, 3] + s[:, 0] ** 2
    return jnp.stack([y, -y], -1)

  x = np.random.default_rng(3).normal(size=(2, 4, 4, 1)).astype(np.float32)
  model = saliency.Model(logits=logits)
  maps = np.asarray(saliency.explain(
      model, x, method="kernel_shap", key=KEY, target=np.zeros(2, np.int32),
      segments=segments, shap_samples=14, baseline=0.0))

  def value(i, coalition):
    keep = np.isin(segments, list(coalition))[..., None]
    return float(logits(jnp.asarray(np.where(keep, x[i:i + 1], 0)))[0, 0])

  for i in range(2):
    for p in range(4):
      phi = 0.0
      others = [q for q in range(4) if q != p]
      for k in range(4):
        for c in itertools.combinations(others, k):
          weight = math.factorial(k) * math.factorial(3 - k) / math.factorial(4)
          phi += weight * (value(i, c + (p,)) - value(i, c))
      np.testing.assert_allclose(maps[i][segments == p].sum(), phi,
                                 rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------------------
# Baselines, keys, errors.


def test_batch_of_baselines_for_every_method_that_takes_one(linear):
  model, w, x = linear
  x0 = np.stack([np.full(x.shape[1:], v, np.float32) for v in (0, 1, -1)])
  t = np.zeros(3, np.int32)
  seg = _grid_segments(6, 6, 3)
  opts = dict(target=t, key=KEY, segments=seg, rise_masks=16, rise_cells=2,
              lime_samples=16, shap_samples=16, occlusion_window=2)
  methods = ("integrated_gradients", "deeplift", "occlusion", "rise", "lime",
             "kernel_shap")
  model = saliency.Model(logits=model.logits,
                         deeplift_logits=saliency.deeplift_logits(
                             model.logits))
  batch = saliency.explain_all(model, x, methods=methods, baseline=x0, **opts)
  for i in range(3):
    # The same batch with image i's baseline for all: the same compiled call.
    one = saliency.explain_all(model, x, methods=methods, baseline=x0[i],
                               **opts)
    for m in methods:
      np.testing.assert_allclose(batch[m][i], one[m][i], rtol=1e-4,
                                 atol=1e-5, err_msg=m)
  np.testing.assert_allclose(batch["integrated_gradients"], (x - x0) * w,
                             rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("options, words", [
    (dict(method="rise", rise_masks=0), "rise_masks"),
    (dict(method="lime", lime_samples=0), "lime_samples"),
    (dict(method="kernel_shap", shap_samples=-3), "shap_samples"),
    (dict(method="occlusion", occlusion_window=9), "occlusion_window"),
    (dict(method="deepshap", references=np.zeros((2, 5, 6, 2))),
     "references"),
    (dict(method="deepshap"), "references"),
    (dict(method="deeplift", baseline=np.zeros((2, 6, 6, 2))), "baseline"),
    (dict(method="occlusion", baseline=np.zeros((6, 5, 2))), "baseline"),
    (dict(method="lime", segments=np.zeros((5, 6), np.int32)), "segments"),
    (dict(method="rise"), "key"),
])
def test_bad_options_fail_in_one_line_naming_them(linear, options, words):
  model, _, x = linear
  model = saliency.Model(logits=model.logits,
                         deeplift_logits=saliency.deeplift_logits(
                             model.logits))
  with pytest.raises(ValueError) as error:
    saliency.explain(model, x, **options)
  assert words in str(error.value) and "\n" not in str(error.value)


def test_missing_deeplift_part_is_named(linear):
  model, _, x = linear
  with pytest.raises(ValueError, match="deeplift_logits"):
    saliency.explain(model_lib.Model(logits=model.logits), x,
                     method="deeplift")


def test_gradient_passes_counts_model_evaluations(linear):
  model, _, _ = linear
  count = lambda m, **o: saliency.gradient_passes(model, (m,), (6, 6, 2), **o)
  assert count("rise", rise_masks=100) == 100
  assert count("occlusion", occlusion_window=2, occlusion_stride=2) == 9 + 1
  assert count("lime", lime_samples=50) == 50
  assert count("kernel_shap", shap_samples=30) == 30 + 2
