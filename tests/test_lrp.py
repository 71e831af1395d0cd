"""LRP (roar_jax/saliency/lrp.py): Zennit's composites, closed forms, sums.

The references (tests/references/lrp.npz, written by make_lrp.py with Zennit
on the torch twins, in float64) hold the images, the Flax variables and
Zennit's maps of a SmallCNN and a ResNet-18 with random BatchNorm statistics
and scales of both signs.
"""

import pathlib

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from roar_jax import models
from roar_jax import saliency
from roar_jax.saliency import lrp

pytestmark = pytest.mark.usefixtures("fast_compiles")

REFERENCES = pathlib.Path(__file__).parent / "references" / "lrp.npz"
# Max |ours - Zennit's| / max |Zennit's|, measured on both models: at most
# 1.3e-6 for the four composites. Plain epsilon (1e-6 in every convolution)
# divides by near-zero pre-activations, which amplifies float32 rounding:
# 1.4e-4 on the CNN and 1.3e-3 on the ResNet in float32, 6e-8 with the Flax
# models in float64, so the rule itself agrees.
TOLERANCE = {"epsilon": 3e-3}
COMPOSITES = ("epsilon_plus", "epsilon_plus_flat", "epsilon_gamma_box",
              "epsilon_alpha2_beta1", "epsilon")


@pytest.fixture(scope="module")
def reference():
  return dict(np.load(REFERENCES))


def _model(name):
  if name == "cnn":
    return models.SmallCNN(10, width=8)
  return models.ResNet18(10, stem="cifar", width=4)


def _variables(reference, name):
  prefix = f"{name}/var/"
  return traverse_util.unflatten_dict(
      {k[len(prefix):]: jnp.asarray(v) for k, v in reference.items()
       if k.startswith(prefix)}, sep="/")


@jax.jit(static_argnums=(0, 5))
def _lrp(module, variables, x, t, bounds, composite):
  """One compilation per model and composite, shared by the tests."""
  return lrp.relevance(lambda y: module.apply(variables, y), x, t, composite,
                       low=bounds[0], high=bounds[1])


def _inputs(reference):
  x, t = jnp.asarray(reference["images"]), jnp.asarray(reference["targets"])
  opts = saliency.Options(pixel_mean=tuple(reference["mean"]),
                          pixel_std=tuple(reference["std"]))
  return x, t, lrp.box_bounds(x, opts)


# Every composite on the CNN; on the ResNet (one compilation of its 20
# convolutions per composite), the two whose rules cover the others': box,
# gamma and epsilon, and alpha-beta, through its folded BatchNorms and
# residual sums.
RESNET_COMPOSITES = ("epsilon_gamma_box", "epsilon_alpha2_beta1")


@pytest.mark.parametrize("name,composites", [
    ("cnn", COMPOSITES), ("resnet", RESNET_COMPOSITES)])
def test_composites_equal_zennits(reference, name, composites):
  module, variables = _model(name), _variables(reference, name)
  x, t, bounds = _inputs(reference)
  for composite in composites:
    ours = np.asarray(_lrp(module, variables, x, t, bounds, composite))
    ref = reference[f"{name}/lrp/{composite}"]
    error = np.abs(ours - ref).max() / np.abs(ref).max()
    assert error <= TOLERANCE.get(composite, 1e-4), (composite, error)


def test_epsilon_of_a_linear_model_is_gradient_times_input():
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.normal(size=(48, 5)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(5,)), jnp.float32)
  f = lambda x: x.reshape(x.shape[0], -1) @ w + b
  x = jnp.asarray(rng.normal(size=(3, 4, 4, 3)), jnp.float32)
  t = jnp.array([0, 3, 4])
  eps = 1e-2
  z = np.asarray(f(x))[np.arange(3), t]
  # R_i = x_i w_it z_t / (z_t + eps sign z_t): the bias's share is dropped.
  expected = (np.asarray(x).reshape(3, -1) * np.asarray(w)[:, t].T
              * (z / (z + eps * np.sign(z)))[:, None]).reshape(x.shape)
  ours = lrp.relevance(f, x, t, "epsilon", epsilon=eps)
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)
  # The first layer's box and flat rules replace epsilon: the dense head
  # is the first layer of epsilon_plus_flat.
  flat = lrp.relevance(f, x, t, "epsilon_plus_flat")
  np.testing.assert_allclose(flat, np.broadcast_to(
      (z / 48)[:, None, None, None], x.shape), rtol=1e-5)


def test_relevance_sums_to_the_logit_without_biases(reference):
  # The reference CNN with its biases zeroed: every rule conserves then (the
  # box rule's bounds and epsilon = 1e-6 change the sums by less than 1e-3).
  module, variables = _model("cnn"), _variables(reference, "cnn")
  variables = traverse_util.unflatten_dict({
      k: jnp.zeros_like(v) if k[-1] == "bias" else v
      for k, v in traverse_util.flatten_dict(variables).items()})
  x, t, bounds = _inputs(reference)
  logit = np.asarray(module.apply(variables, x))[np.arange(len(t)), t]
  for composite in COMPOSITES:
    maps = _lrp(module, variables, x, t, bounds, composite)
    np.testing.assert_allclose(np.sum(maps, axis=(1, 2, 3)), logit,
                               rtol=1e-3, err_msg=composite)


def test_box_bounds():
  x = jnp.arange(24.0).reshape(2, 2, 2, 3)
  low, high = lrp.box_bounds(x, saliency.Options())
  np.testing.assert_array_equal(low[:, 0, 0], [[0, 1, 2], [12, 13, 14]])
  np.testing.assert_array_equal(high[:, 0, 0], [[9, 10, 11], [21, 22, 23]])
  opts = saliency.Options(pixel_mean=(0.5, 0.25, 0.0), pixel_std=(0.5,) * 3)
  low, high = lrp.box_bounds(x, opts)
  np.testing.assert_allclose(low, [-1, -0.5, 0])
  np.testing.assert_allclose(high, [1, 1.5, 2])


def test_estimators_through_explain(reference):
  module, variables = _model("cnn"), _variables(reference, "cnn")
  model = saliency.explainable(module, variables,
                               pixel_mean=tuple(reference["mean"]),
                               pixel_std=tuple(reference["std"]))
  x, t = jnp.asarray(reference["images"]), jnp.asarray(reference["targets"])
  for composite in ("epsilon_plus", "epsilon_gamma_box"):
    maps = saliency.explain(model, x, method=f"lrp_{composite}", target=t)
    ref = reference[f"cnn/lrp/{composite}"]
    assert np.abs(maps - ref).max() / np.abs(ref).max() <= 1e-4, composite
  assert {f"lrp_{c}" for c in lrp.COMPOSITES} <= set(
      saliency.available_methods())
