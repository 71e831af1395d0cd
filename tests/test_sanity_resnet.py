"""Model randomization of ResNets: a randomized block is random, not removed.

ResNet v1.5 initializes the last BatchNorm scale of every block to zero, so
re-running a block's initializers as they are would zero its residual branch
and pass its input through: every "randomized" block would be removed. These
tests re-initialize each block of ResNet-18 (CIFAR stem) and ResNet-50 (small
widths) and check that its residual branch is live.
"""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from roar_jax.benchmark.sanity import randomization
from roar_jax.models import resnet

SHAPE = (16, 16, 3)
NETS = {
    "resnet18_cifar": lambda: resnet.ResNet18(10, stem="cifar", width=8),
    "resnet50": lambda: resnet.ResNet50(10, width=4),
}


# These tests compile far more than they run.
pytestmark = pytest.mark.usefixtures("fast_compiles")


@functools.lru_cache(maxsize=None)
def _block_apply(filters, strides, bottleneck):
  """The jitted apply of one block configuration (compiled once)."""
  block = resnet.ResidualBlock(filters, strides=strides,
                               bottleneck=bottleneck, act=nn.relu)
  return jax.jit(lambda v, x: block.apply(v, x, train=False))


def _block(module, name):
  """The apply of block `name` of `module`, and its input channels."""
  i, j = (int(v) for v in re.fullmatch(r"stage(\d+)_block(\d+)",
                                        name).groups())
  factor = 4 if module.bottleneck else 1
  filters = module.width * 2 ** (i - 1)
  if j > 1:
    in_channels = filters * factor
  elif i == 1:
    in_channels = module.width
  else:
    in_channels = module.width * 2 ** (i - 2) * factor
  return _block_apply(filters, 2 if i > 1 and j == 1 else 1,
                      module.bottleneck), in_channels


@pytest.mark.parametrize("net", sorted(NETS))
def test_every_randomized_block_changes_its_output(net):
  module = NETS[net]()
  # The init randomize compiles anyway (un-jitted, it would compile op by op).
  init = randomization._jitted_init  # pylint: disable=protected-access
  variables = init(module, SHAPE)(jax.random.key(0))
  names = randomization.layer_names(module, variables)
  blocks = [n for n in names if n.startswith("stage")]
  assert len(blocks) == (8 if net.startswith("resnet18") else 16)
  last_bn = "bn3" if module.bottleneck else "bn2"
  key = jax.random.key(5)
  for name in blocks:
    new = randomization.randomize(module, variables, [name], key,
                                  init="original", input_shape=SHAPE)
    # The zero-initialized scale comes back as a standard BatchNorm scale.
    np.testing.assert_array_equal(new["params"][name][last_bn]["scale"], 1.0)
    apply, cin = _block(module, name)
    x = jax.random.normal(jax.random.key(1), (2, 4, 4, cin))
    block_vars = {"params": new["params"][name],
                  "batch_stats": new["batch_stats"][name]}
    out = apply(block_vars, x)
    # The same block with its last scale at zero: the residual branch is
    # off, the failure this fix removes.
    off = jax.tree.map(lambda a: a, block_vars)
    off["params"] = dict(off["params"])
    off["params"][last_bn] = {**off["params"][last_bn],
                              "scale": jnp.zeros_like(
                                  off["params"][last_bn]["scale"])}
    out_off = apply(off, x)
    if "proj_conv" not in block_vars["params"]:
      # Without a projection, a block whose branch is off is relu(x).
      np.testing.assert_allclose(out_off, nn.relu(x), atol=1e-6)
    branch = float(jnp.mean(jnp.abs(out - out_off)))
    assert branch > 0.1 * float(jnp.mean(jnp.abs(out_off))), (net, name,
                                                              branch)


def test_randomized_block_changes_the_logits():
  module = NETS["resnet18_cifar"]()
  init = randomization._jitted_init  # pylint: disable=protected-access
  variables = init(module, SHAPE)(jax.random.key(0))
  x = jax.random.normal(jax.random.key(2), (4, *SHAPE))
  key = jax.random.key(3)
  for name in ("stage1_block2", "stage4_block2"):
    new = randomization.randomize(module, variables, [name], key,
                                  init="original", input_shape=SHAPE)
    removed = jax.tree.map(lambda a: a, new)
    removed["params"] = dict(removed["params"])
    removed["params"][name] = dict(removed["params"][name])
    removed["params"][name]["bn2"] = {
        **removed["params"][name]["bn2"],
        "scale": jnp.zeros_like(removed["params"][name]["bn2"]["scale"])}
    apply = jax.jit(module.apply)
    a = apply(new, x)
    b = apply(removed, x)
    assert float(jnp.max(jnp.abs(a - b))) > 1e-4 * float(
        jnp.max(jnp.abs(b))) + 1e-7, name


def test_truncated_normal_block_keeps_unit_batchnorm_scales():
  """init='truncated_normal' draws the convolutions at std 0.01 and gives
  every BatchNorm of the block scale 1 and offset 0; with scales drawn at
  std 0.01 as well, the residual branch would shrink about a hundredfold."""
  module = NETS["resnet18_cifar"]()
  init = randomization._jitted_init  # pylint: disable=protected-access
  variables = init(module, SHAPE)(jax.random.key(0))
  name = "stage2_block2"
  new = randomization.randomize(module, variables, [name], jax.random.key(5),
                                init="truncated_normal", init_std=0.01)
  params = new["params"][name]
  for bn in ("bn1", "bn2"):
    np.testing.assert_array_equal(params[bn]["scale"], 1.0)
    np.testing.assert_array_equal(params[bn]["bias"], 0.0)
  for conv in ("conv1", "conv2"):
    kernel = np.asarray(params[conv]["kernel"])
    assert np.abs(kernel).max() <= 0.02 + 1e-7
    # A 2-sigma-truncated N(0, s^2) has std 0.88 s.
    assert kernel.std() == pytest.approx(0.0088, rel=0.1)
  apply, cin = _block(module, name)
  x = jax.random.normal(jax.random.key(1), (2, 4, 4, cin))
  stats = new["batch_stats"][name]
  branch = apply({"params": params, "batch_stats": stats}, x) - nn.relu(x)
  small = {k: ({"scale": jnp.full_like(v["scale"], 0.01), "bias": v["bias"]}
               if k.startswith("bn") else v) for k, v in params.items()}
  shrunk = apply({"params": small, "batch_stats": stats}, x) - nn.relu(x)
  # BatchNorm is linear in its scale (offset 0, statistics reset): bn2's
  # scale alone divides the branch by 100 before the final ReLU.
  ratio = float(jnp.mean(jnp.abs(branch)) / jnp.mean(jnp.abs(shrunk)))
  assert ratio > 50, ratio


def test_unit_zero_scales_touches_only_all_zero_scales():
  params = {"bn": {"scale": jnp.zeros(3), "bias": jnp.zeros(3)},
            "bn_trained": {"scale": jnp.array([0.0, 0.5, 0.0])},
            "dense": {"kernel": jnp.zeros((2, 2))}}
  out = randomization.unit_zero_scales(params)
  np.testing.assert_array_equal(out["bn"]["scale"], 1.0)
  np.testing.assert_array_equal(out["bn"]["bias"], 0.0)
  np.testing.assert_array_equal(out["bn_trained"]["scale"], [0.0, 0.5, 0.0])
  np.testing.assert_array_equal(out["dense"]["kernel"], 0.0)
