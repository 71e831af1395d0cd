"""Saliency estimators: analytic values, shared work, controls, errors."""

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from roar_jax import models
from roar_jax.saliency import explainable
from roar_jax.saliency import explaining as api
from roar_jax.saliency import controls
from roar_jax.saliency import lowering
from roar_jax.saliency import model as model_lib
from roar_jax.saliency import registry

KEY = jax.random.key(42)
SHAPE = (4, 4, 2)  # Small images keep every compile short.


# ---------------------------------------------------------------------------
# Analytic models.


def _linear(w, u=None):
  """logits(x) = [w.x, u.x] per image (u defaults to -w)."""
  u = -w if u is None else u
  return model_lib.Model(logits=lambda x: jnp.stack(
      [jnp.sum(x * w, axis=(1, 2, 3)), jnp.sum(x * u, axis=(1, 2, 3))], -1))


@pytest.fixture(scope="module")
def linear():
  rng = np.random.default_rng(0)
  w = rng.normal(size=SHAPE).astype(np.float32) * 3
  x = rng.normal(size=(3,) + SHAPE).astype(np.float32)
  return _linear(jnp.asarray(w)), w, x


def test_linear_gradient_ig_and_ensembles(linear):
  model, w, x = linear
  x0 = np.float32(0.5)
  names = ("gradient", "gradient_x_input", "integrated_gradients",
           "sg.gradient", "sg_sq.gradient", "var.gradient")
  maps = api.explain_all(model, x, methods=names, key=KEY,
                         target=np.zeros(3, np.int32), baseline=x0,
                         ig_steps=7)
  wb = np.broadcast_to(w, x.shape)
  np.testing.assert_allclose(maps["gradient"], wb, rtol=1e-6)
  np.testing.assert_allclose(maps["gradient_x_input"], x * wb, rtol=1e-6)
  # IG of a linear model is exact for any number of steps.
  np.testing.assert_allclose(maps["integrated_gradients"], (x - x0) * wb,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(maps["sg.gradient"], wb, rtol=1e-6)
  np.testing.assert_allclose(maps["sg_sq.gradient"], wb**2, rtol=1e-6)
  # Every noisy gradient equals w: the variance is 0 up to the rounding of
  # the mean (the two-pass formula; E[a^2] - E[a]^2 would leave ~1e-6 w^2).
  assert np.max(np.asarray(maps["var.gradient"]) / wb**2) < 1e-12
  for m in maps.values():
    assert m.dtype == jnp.float32 and m.shape == x.shape


def test_target_names_the_class(linear):
  rng = np.random.default_rng(1)
  w, u = (jnp.asarray(rng.normal(size=SHAPE), jnp.float32) for _ in range(2))
  x = rng.normal(size=(2,) + SHAPE).astype(np.float32)
  maps = api.explain(_linear(w, u), x, method="gradient", key=KEY,
                     target=np.array([1, 0]))
  np.testing.assert_allclose(maps[0], u, rtol=1e-6)
  np.testing.assert_allclose(maps[1], w, rtol=1e-6)
  # target=None explains the predicted class.
  pred = np.argmax([[np.sum(xi * w), np.sum(xi * u)] for xi in x], axis=1)
  maps = api.explain(_linear(w, u), x, method="gradient", key=KEY)
  for i, p in enumerate(pred):
    np.testing.assert_allclose(maps[i], (w, u)[p], rtol=1e-6)


def test_quadratic_smoothgrad_sq_and_vargrad_closed_forms():
  # f(x) = 1/2 x^T A x: gradient A x; with noise n ~ N(0, s^2 I) the noisy
  # gradient is A x + A n, so per coordinate
  #   SG = (Ax)_i, VAR = s^2 (A A^T)_ii, SG-SQ = (Ax)_i^2 + VAR_i.
  rng = np.random.default_rng(2)
  shape = (2, 3, 1)
  d = int(np.prod(shape))
  b = rng.normal(size=(d, d))
  a = ((b + b.T) / 2).astype(np.float32)
  x = rng.normal(size=(2,) + shape).astype(np.float32)

  def logits(imgs):
    v = imgs.reshape(imgs.shape[0], -1)
    f = 0.5 * jnp.einsum("ni,ij,nj->n", v, a, v)
    return jnp.stack([f, -f], -1)

  j, scale = 4000, 0.15
  maps = api.explain_all(
      model_lib.Model(logits=logits), x, key=KEY, target=np.zeros(2, np.int32),
      methods=("sg.gradient", "sg_sq.gradient", "var.gradient"),
      num_samples=j, noise_scale=scale)
  for i in range(2):
    s = scale * (x[i].max() - x[i].min())
    mu = a @ x[i].reshape(-1)
    var = s**2 * np.sum(a * a, axis=1)
    se = lambda v: np.sqrt(v / j)
    # Five standard errors of each estimator (Gaussian moments).
    np.testing.assert_array_less(
        np.abs(np.asarray(maps["sg.gradient"][i]).reshape(-1) - mu),
        5 * se(var))
    np.testing.assert_array_less(
        np.abs(np.asarray(maps["var.gradient"][i]).reshape(-1) - var),
        5 * se(2 * var**2))
    np.testing.assert_array_less(
        np.abs(np.asarray(maps["sg_sq.gradient"][i]).reshape(-1) -
               (mu**2 + var)),
        5 * se(2 * var**2 + 4 * mu**2 * var))


class _TinyMLP(nn.Module):
  """The project's model contract in miniature: fields num_classes and act."""
  num_classes: int
  act: callable = nn.relu

  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = x.reshape(x.shape[0], -1)
    x = self.act(nn.Dense(8, name="fc1")(x))
    x = self.act(nn.Dense(6, name="fc2")(x))
    return nn.Dense(self.num_classes, name="logits")(x)


def _init(module, x, seed=1, scale=0.5):
  """Random variables of `module` (biases non-zero too), without compiling."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), x)
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: scale * rng.normal(size=s.shape).astype(np.float32), shapes)


@pytest.fixture(scope="module")
def mlp():
  module = _TinyMLP(3)
  x = 2 * np.random.default_rng(0).normal(size=(5,) + SHAPE).astype(
      np.float32)
  # Non-zero biases make the ReLU pattern change along the IG path.
  return module, _init(module, x), x


def test_integrated_gradients_completeness(mlp):
  module, variables, x = mlp
  model = explainable(module, variables)
  x0 = -0.25
  maps = api.explain(model, x, method="integrated_gradients", key=KEY,
                     ig_steps=2000, baseline=x0)
  logits = module.apply(variables, x)
  base = module.apply(variables, np.full_like(x, x0))
  t = np.argmax(logits, axis=1)
  delta = np.take_along_axis(np.asarray(logits - base), t[:, None], 1)[:, 0]
  total = np.asarray(maps).reshape(len(x), -1).sum(axis=1)
  assert np.all(np.abs(delta) > 0.1)
  np.testing.assert_allclose(total, delta, rtol=0.01)


def test_guided_backprop_equals_hand_computed_pass(mlp):
  module, variables, x = mlp
  maps = api.explain(explainable(module, variables), x,
                     method="guided_backprop", key=KEY)
  p = jax.tree.map(np.asarray, variables["params"])
  v = x.reshape(len(x), -1)
  h1 = v @ p["fc1"]["kernel"] + p["fc1"]["bias"]
  h2 = np.maximum(h1, 0) @ p["fc2"]["kernel"] + p["fc2"]["bias"]
  out = np.maximum(h2, 0) @ p["logits"]["kernel"] + p["logits"]["bias"]
  for n in range(len(x)):
    g = p["logits"]["kernel"][:, np.argmax(out[n])]
    g = g * (h2[n] > 0) * (g > 0)  # Guided ReLU: both gates.
    g = p["fc2"]["kernel"] @ g
    g = g * (h1[n] > 0) * (g > 0)
    g = p["fc1"]["kernel"] @ g
    np.testing.assert_allclose(np.asarray(maps[n]).reshape(-1), g,
                               rtol=1e-5, atol=1e-6)
  # Some gradient was actually blocked: it differs from the plain one.
  plain = api.explain(explainable(module, variables), x, method="gradient",
                      key=KEY)
  assert not np.allclose(plain, maps)


def test_guided_relu_rule():
  x = jnp.array([-1.0, 2.0, 3.0, 0.0])
  y, vjp = jax.vjp(model_lib.guided_relu, x)
  np.testing.assert_array_equal(y, [0, 2, 3, 0])
  np.testing.assert_array_equal(vjp(jnp.array([5.0, -4.0, 6.0, 7.0]))[0],
                                [0, 0, 6, 0])


# ---------------------------------------------------------------------------
# GradCAM.


def test_gradcam_closed_form():
  # features(x) = x, head(f) = mean_hw(f) @ V: d logit_k / d f_hwc = V_ck / HW,
  # so GradCAM = ReLU(sum_c V_ck x_c) / HW at full resolution.
  rng = np.random.default_rng(3)
  v = rng.normal(size=(SHAPE[2], 3)).astype(np.float32)
  head = lambda f: jnp.mean(f, axis=(1, 2)) @ v
  model = model_lib.Model(logits=lambda x: head(x), features=lambda x: x,
                          head=head, guided_logits=lambda x: head(x))
  x = rng.normal(size=(2,) + SHAPE).astype(np.float32)
  maps = api.explain_all(model, x, methods=("gradcam", "guided_gradcam",
                                            "guided_backprop"),
                         key=KEY, target=np.array([2, 0]))
  hw = SHAPE[0] * SHAPE[1]
  for n, k in enumerate([2, 0]):
    cam = np.maximum(x[n] @ v[:, k], 0) / hw
    np.testing.assert_allclose(maps["gradcam"][n],
                               np.broadcast_to(cam[..., None], SHAPE),
                               rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(maps["guided_gradcam"],
                             maps["gradcam"] * maps["guided_backprop"],
                             rtol=1e-6)


def test_gradcam_upsamples_coarse_features():
  # 2x2 features of a 4x4 image; a constant positive CAM stays constant.
  feats = lambda x: jnp.ones((x.shape[0], 2, 2, 1)) + 0 * jnp.sum(x)
  head = lambda f: jnp.stack([jnp.sum(f, axis=(1, 2, 3))] * 2, -1)
  model = model_lib.Model(logits=lambda x: head(feats(x)), features=feats,
                          head=head)
  maps = api.explain(model, np.zeros((1,) + SHAPE, np.float32),
                     method="gradcam", key=KEY)
  np.testing.assert_allclose(maps, np.ones((1,) + SHAPE), rtol=1e-6)


# ---------------------------------------------------------------------------
# Shared work and ensembles.


class _TinyCNN(nn.Module):
  """A one-convolution network with the project's features/head split."""
  num_classes: int
  act: callable = nn.relu

  @nn.compact
  def __call__(self, x, train=False):
    return self.head(self.features(x, train), train)

  @nn.compact
  def features(self, x, train=False):
    del train
    return self.act(nn.Conv(4, (3, 3), name="conv")(x))

  @nn.compact
  def head(self, f, train=False):
    del train
    return nn.Dense(self.num_classes, name="logits")(jnp.mean(f, axis=(1, 2)))


class _PoolCNN(_TinyCNN):
  """_TinyCNN with Flax's (reduce_window) overlapping max pooling."""

  @nn.compact
  def features(self, x, train=False):
    del train
    x = self.act(nn.Conv(4, (3, 3), name="conv")(x))
    return nn.max_pool(x, (3, 3), (2, 2), padding="SAME")


ALL = tuple(m for m in api.available_methods() if m not in (
    "deeplift", "deepshap", "occlusion", "rise", "lime", "kernel_shap",
    "xrai", "expected_gradients"))  # Tested in their own test modules.
# These models declare no normalization: IG is given its baseline.
OPTS = dict(num_samples=3, ig_steps=4, baseline=0.0)
INDICES = np.arange(10, 18, dtype=np.int32)


@pytest.fixture(scope="module")
def cnn():
  module = _TinyCNN(3)
  x = np.random.default_rng(5).normal(size=(8, 6, 6, 2)).astype(np.float32)
  variables = _init(module, x, seed=6)
  model = explainable(module, variables)
  # Every method in one call: compiled once, shared by the tests below.
  maps = api.explain_all(model, x, methods=ALL, key=KEY, indices=INDICES,
                         **OPTS)
  return model, x, {k: np.asarray(v) for k, v in maps.items()}


def test_explainable_parts():
  module = models.SmallCNN(4, width=2)
  x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
  variables = _init(module, x, scale=0.3)
  model = explainable(module, variables)
  logits, guided, split, direct = jax.jit(lambda x: (
      model.logits(x), model.guided_logits(x), model.head(model.features(x)),
      module.apply(variables, x)))(x)
  np.testing.assert_allclose(logits, direct, rtol=1e-6)
  # The guided network computes the same forward pass.
  np.testing.assert_allclose(guided, logits, rtol=1e-6)
  np.testing.assert_allclose(split, logits, rtol=1e-6)
  mlp = models.SanityMLP(3, hidden=(4,))
  mlp_vars = jax.eval_shape(mlp.init, jax.random.key(0), x)
  mlp_model = explainable(mlp, mlp_vars)
  assert mlp_model.features is None and mlp_model.head is None
  assert mlp_model.guided_logits is not None
  # No guided form of another activation.
  assert explainable(mlp.clone(act=nn.gelu), mlp_vars).guided_logits is None


def test_new_weights_reuse_compiled_code_with_new_values(mlp, caplog):
  module, variables, x = mlp
  other = jax.tree.map(lambda p: -p, variables)
  target = np.zeros(len(x), np.int32)
  explain = lambda v: api.explain(explainable(module, v), x, key=KEY,
                                  method="gradient", target=target)
  first = explain(variables)
  # The weights are arguments of the jitted steps, not constants: a model
  # with new weights compiles nothing new, and gets its own gradients.
  with caplog.at_level(logging.WARNING), jax.log_compiles(True):
    second = explain(other)
  assert not [r for r in caplog.records if "Compiling" in r.getMessage()]
  for m, v in zip((first, second), (variables, other)):
    expected = jax.grad(lambda x: module.apply(v, x)[:, 0].sum())(x)
    np.testing.assert_allclose(m, expected, rtol=1e-5, atol=1e-7)


def test_explain_all_equals_separate_calls(cnn):
  model, x, together = cnn
  for m in ("sg.gradient", "var.integrated_gradients", "guided_gradcam"):
    alone = api.explain(model, x, method=m, key=KEY, indices=INDICES, **OPTS)
    np.testing.assert_allclose(together[m], alone, rtol=1e-5, atol=1e-8,
                               err_msg=m)
  # SG-SQ = SG^2 + VAR: all three come from the same noisy gradients.
  for base in ("gradient", "integrated_gradients", "guided_backprop",
               "gradient_x_input"):
    np.testing.assert_allclose(
        together[f"sg_sq.{base}"],
        np.square(together[f"sg.{base}"]) + together[f"var.{base}"],
        rtol=1e-4, atol=1e-9, err_msg=base)
    # Not degenerate: the noise changes the estimate.
    assert together[f"var.{base}"].max() > 0, base
  np.testing.assert_allclose(together["gradient_x_input"],
                             x * together["gradient"], rtol=1e-6)
  np.testing.assert_allclose(together["guided_gradcam"],
                             together["gradcam"] * together["guided_backprop"],
                             rtol=1e-6)


@pytest.mark.parametrize("j,m", [(15, 25), (3, 4)])
def test_gradient_passes_of_the_paper_estimators(cnn, j, m):
  model, x, _ = cnn
  bases = ("gradient", "integrated_gradients", "guided_backprop")
  twelve = [f"{p}{b}" for b in bases for p in ("", "sg.", "sg_sq.", "var.")]
  count = lambda methods: api.gradient_passes(
      model, methods, x.shape[1:], num_samples=j, ig_steps=m)
  # Bases: GRAD 1 + IG m + GB 1; each base's three ensembles share J noisy
  # evaluations in one call, but draw them three times when computed alone.
  assert count(twelve) == (2 + m) * (1 + j)
  assert sum(count((e,)) for e in twelve) == (2 + m) * (1 + 3 * j)
  if (j, m) == (15, 25):
    assert (count(twelve), sum(count((e,)) for e in twelve)) == (432, 1242)


def test_gradient_passes_count_shared_work_once(cnn):
  model, x, _ = cnn
  count = lambda *methods: api.gradient_passes(model, methods, x.shape[1:],
                                               num_samples=4, ig_steps=5)
  assert count("gradient", "gradient_x_input") == 1
  assert count("random", "sobel") == 0
  assert count("sg.gradient", "var.gradient") == 4
  assert count("sg.gradient", "sg.gradient_x_input") == 4
  assert count("var.integrated_gradients") == 20
  # GradCAM differentiates the head only: one (partial) pass; Guided GradCAM
  # adds the guided pass and reuses GradCAM's.
  assert count("gradcam", "guided_gradcam") == 2


def test_noise_sample_groups_merge_exactly(cnn):
  # A budget of 2 model passes per step splits each image's 3 noise samples
  # into groups of one; the merged statistics equal the one-group ones.
  model, x, full = cnn
  methods = ("sg.gradient", "sg_sq.gradient", "var.gradient",
             "var.integrated_gradients")
  grouped = api.explain_all(model, x, methods=methods, key=KEY,
                            indices=INDICES, evaluations_per_step=2, **OPTS)
  for m in methods:
    np.testing.assert_allclose(grouped[m], full[m], rtol=1e-4, atol=1e-9,
                               err_msg=m)


def test_maps_do_not_depend_on_batch_or_chunking(cnn):
  model, x, full = cnn
  perm = np.array([4, 1, 5])
  methods = ("sg.gradient", "random")
  part = api.explain_all(model, x[perm], methods=methods, key=KEY,
                         indices=INDICES[perm], chunk_size=2, **OPTS)
  for m in methods:
    np.testing.assert_allclose(part[m], full[m][perm], rtol=1e-5, atol=1e-8,
                               err_msg=m)
  # Another index (or seed) gives another random map.
  other = api.explain(model, x[:1], method="random", key=KEY,
                      indices=np.array([99], np.int32))
  assert not np.allclose(other[0], full["random"][0])
  reseeded = api.explain(model, x[:1], method="random",
                         key=jax.random.key(7), indices=INDICES[:1])
  assert not np.allclose(reseeded[0], full["random"][0])
  assert full["random"].min() >= 0 and full["random"].max() < 1
  # Without indices, image i is index i.
  default = api.explain(model, x[:1], method="random", key=KEY)
  np.testing.assert_array_equal(
      default, api.explain(model, x[:1], method="random", key=KEY,
                           indices=np.array([0], np.int32)))


def test_sharded_equals_one_device(cnn):
  model, x, one = cnn
  methods = ("gradient", "var.gradient", "integrated_gradients", "gradcam",
             "random")
  mesh = jax.make_mesh((8,), ("data",))
  put = lambda a: jax.device_put(a, jax.NamedSharding(mesh, jax.P("data")))
  sharded = api.explain_all(model, put(x), methods=methods, key=KEY,
                            indices=put(INDICES), **OPTS)
  for m in methods:
    assert sharded[m].sharding.spec[0] == "data", m
    np.testing.assert_allclose(sharded[m], one[m], rtol=1e-5, atol=1e-7,
                               err_msg=m)


def test_fast_pooling_same_values_and_gradients():
  x = np.random.default_rng(8).normal(size=(2, 7, 9, 3)).astype(np.float32)
  pools = [
      lambda x: nn.max_pool(x, (2, 2), (2, 2)),  # Non-overlapping, cropped.
      lambda x: nn.max_pool(x, (3, 3), (2, 2), padding="SAME"),  # Overlapping.
      lambda x: jax.jit(lambda y: jnp.sin(nn.max_pool(y, (2, 3), (1, 2))))(x),
  ]
  for f in pools:
    fast = lowering.fast_pooling(f)
    np.testing.assert_array_equal(jax.jit(fast)(x), f(x))
    grad = lambda g: jax.jit(jax.grad(lambda x: jnp.sum(jnp.cos(g(x)))))(x)
    np.testing.assert_allclose(grad(fast), grad(f), rtol=1e-6, atol=1e-7)
  # The explain path: a pooling model explained with and without it.
  module = _PoolCNN(3)
  xs = x[:, :, :8][:, :4].repeat(2, axis=1)  # 8 x 8 images.
  model = explainable(module, _init(module, xs, scale=0.3))
  fast, slow = (api.explain(model, xs, method="guided_backprop", key=KEY,
                            fast_pooling=f) for f in (True, False))
  np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-8)
  assert np.abs(np.asarray(fast)).max() > 0


# ---------------------------------------------------------------------------
# Controls.


def test_sobel_matches_scipy():
  x = np.random.default_rng(4).normal(size=(2, 7, 5, 3)).astype(np.float32)
  maps = api.explain(_linear(jnp.ones((7, 5, 3))), x, method="sobel", key=KEY)
  for n in range(2):
    for c in range(3):
      img = x[n, :, :, c].astype(np.float64)
      ref = np.hypot(ndimage.sobel(img, axis=0), ndimage.sobel(img, axis=1))
      np.testing.assert_allclose(maps[n, :, :, c], ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(controls.sobel_magnitude(x), maps, rtol=1e-6)


# ---------------------------------------------------------------------------
# Registry and errors.


def test_register_user_estimator(cnn):
  model, x, reference = cnn

  @api.register("twice_gradient", ensemble=True)
  def twice_gradient(inputs):
    return 2.0 * inputs.gradient()

  try:
    assert "var.twice_gradient" in api.available_methods()
    maps = api.explain_all(model, x, key=KEY, indices=INDICES,
                           methods=("twice_gradient", "sg.twice_gradient"),
                           **OPTS)
    np.testing.assert_allclose(maps["twice_gradient"],
                               2 * reference["gradient"], rtol=1e-6)
    np.testing.assert_allclose(maps["sg.twice_gradient"],
                               2 * reference["sg.gradient"], rtol=1e-5,
                               atol=1e-9)
    with pytest.raises(ValueError, match="already registered"):
      api.register("twice_gradient")(twice_gradient)
  finally:
    registry.unregister("twice_gradient")
  assert "twice_gradient" not in api.available_methods()


def test_missing_parts_and_unknown_names(linear):
  model, _, x = linear
  with pytest.raises(ValueError, match="guided_logits"):
    api.explain(model, x, method="guided_backprop", key=KEY)
  with pytest.raises(ValueError, match="features"):
    api.explain(model, x, method="gradcam", key=KEY)
  with pytest.raises(ValueError, match="guided_logits"):
    api.explain(model, x, method="guided_gradcam", key=KEY)
  with pytest.raises(ValueError, match=r"unknown saliency method 'smoothgrad'"
                     r".*'sg\.gradient'.*'var\.integrated_gradients'"):
    api.explain(model, x, method="smoothgrad", key=KEY)
  with pytest.raises(ValueError, match="unknown saliency method 'sg.gradcam'"):
    api.explain(model, x, method="sg.gradcam", key=KEY)
  with pytest.raises(ValueError, match=r"unknown saliency option.*num_sample"):
    api.explain(model, x, method="gradient", key=KEY, num_sample=3)
  with pytest.raises(ValueError, match="ig_steps"):
    api.explain(model, x, method="gradient", key=KEY, ig_steps=0)
  with pytest.raises(ValueError, match="target"):
    api.explain(model, x, method="gradient", key=KEY, target=np.zeros(2, int))
  with pytest.raises(ValueError, match="images"):
    api.explain(model, x[0], method="gradient", key=KEY)
  with pytest.raises(ValueError, match="baseline"):
    api.explain(model, x, method="integrated_gradients", key=KEY,
                baseline=np.zeros(5))
  mlp = models.SanityMLP(3, hidden=(4,))
  mlp_model = explainable(mlp, jax.eval_shape(mlp.init, jax.random.key(0), x))
  with pytest.raises(ValueError, match=r"Model\.features"):
    api.explain(mlp_model, x, method="gradcam", key=KEY)
