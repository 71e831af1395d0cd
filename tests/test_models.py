"""Models: known parameter counts, the features/head split, names, activations."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from roar_jax import models


def _count(variables):
  return sum(x.size for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("name,options,shape,classes,expected", [
    # Published sizes: ResNet-50 has 25,557,032 parameters with 1000 classes;
    # the CIFAR ResNet-18 (1x1 projection shortcuts) 11,173,962.
    ("resnet50", {"stem": "imagenet"}, (1, 64, 64, 3), 1000, 25_557_032),
    ("resnet18", {"stem": "cifar"}, (1, 32, 32, 3), 10, 11_173_962),
    # Adebayo et al.'s MNIST CNN and MLP, counted by hand from App. B.
    ("sanity_cnn", {}, (1, 28, 28, 1), 10,
     5 * 5 * 32 + 32 + 5 * 5 * 32 * 64 + 64 + 7 * 7 * 64 * 1024 + 1024
     + 1024 * 10 + 10),
    ("sanity_mlp", {}, (1, 28, 28, 1), 10,
     784 * 2500 + 2500 + 2500 * 1500 + 1500 + 1500 * 500 + 500 + 500 * 10
     + 10),
])
def test_parameter_counts_and_layer_order(name, options, shape, classes,
                                          expected):
  module = models.get_model({"name": name, name: options}, classes)
  variables = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros(shape))
  assert _count(variables) == expected
  # layer_names names every top-level parameter group, once. (Their order
  # is the call order; a jax transformation sorts dict keys, so it cannot be
  # read back from the pytree.)
  assert sorted(variables["params"]) == sorted(module.layer_names())
  assert len(set(module.layer_names())) == len(module.layer_names())


@pytest.mark.parametrize("name,options,shape", [
    ("small_cnn", {"width": 8}, (2, 32, 32, 3)),
    ("sanity_cnn", {}, (2, 28, 28, 1)),
    ("resnet18", {"stem": "cifar", "width": 8}, (2, 32, 32, 3)),
])
def test_head_of_features_is_the_model(name, options, shape):
  module = models.get_model({"name": name, name: options}, 5)
  x = jax.random.normal(jax.random.key(1), shape)
  variables = module.init(jax.random.key(0), x)
  if "batch_stats" in variables:  # Non-trivial running statistics.
    variables = flax.core.copy(variables, {"batch_stats": jax.tree.map(
        lambda s: s + 0.3, variables["batch_stats"])})
  logits = module.apply(variables, x)
  feats = module.apply(variables, x, method="features")
  assert feats.ndim == 4
  np.testing.assert_allclose(
      module.apply(variables, feats, method="head"), logits, atol=1e-5)


def test_activation_is_swappable():
  module = models.get_model({"name": "small_cnn"}, 3)
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  variables = module.init(jax.random.key(0), x)
  # With a zero activation every image reaches the head as zeros: the logits
  # are the head's bias alone, the same for every image.
  zeroed = module.clone(act=jnp.zeros_like)
  logits = zeroed.apply(variables, x)
  np.testing.assert_allclose(logits, jnp.broadcast_to(
      variables["params"]["logits"]["bias"], logits.shape))
  assert not np.allclose(module.apply(variables, x)[0],
                         module.apply(variables, x)[1])


def test_resnet_blocks_start_as_identity_residuals():
  # ResNet-50's bottleneck blocks, at a small width and depth.
  module = models.ResNet(10, stage_sizes=(1, 2), bottleneck=True, width=8)
  variables = module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  for name in module.layer_names():
    if "block" in name:
      # The last BatchNorm scale of every block is zero-initialized.
      assert not np.any(variables["params"][name]["bn3"]["scale"])
      assert np.all(variables["params"][name]["bn1"]["scale"] == 1)


def test_unknown_model_and_option_are_named():
  with pytest.raises(ValueError, match="config.model.name='vgg'"):
    models.get_model({"name": "vgg"}, 10)
  with pytest.raises(ValueError, match="config.model.resnet18"):
    models.get_model({"name": "resnet18", "resnet18": {"depth": 3}}, 10)


def test_max_pool_2x2_equals_flax_max_pool():
  from roar_jax.models import small_cnn  # pylint: disable=g-import-not-at-top
  x = np.random.default_rng(3).normal(size=(2, 7, 9, 3)).astype(np.float32)
  flax_pool = lambda x: nn.max_pool(x, (2, 2), (2, 2))
  np.testing.assert_array_equal(small_cnn.max_pool_2x2(x), flax_pool(x))
  grad = lambda pool: jax.grad(lambda x: jnp.sum(jnp.sin(pool(x))))(x)
  np.testing.assert_allclose(grad(small_cnn.max_pool_2x2), grad(flax_pool),
                             rtol=1e-6)
  # A tie: the gradient is split among the tied inputs (a subgradient too).
  tie = jnp.ones((1, 2, 2, 1))
  g = jax.grad(lambda x: jnp.sum(small_cnn.max_pool_2x2(x)))(tie)
  np.testing.assert_allclose(g, np.full((1, 2, 2, 1), 0.25))
