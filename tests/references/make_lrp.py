"""Writes tests/references/lrp.npz: Zennit's LRP maps of the torch twins.

Run from the repository root (needs torch and zennit, which the tests do not):

    python tests/references/make_lrp.py

The models are the project's SmallCNN (width 8) and ResNet-18 with the CIFAR
stem (width 4), with random weights, biases and BatchNorm statistics (scales
of both signs, so merging BatchNorm into the convolutions changes which
weights are positive), on 2 random 16x16 images in the normalized input
space. The file holds the images, targets, box bounds, the Flax variables
and, per model and composite, Zennit's relevance (computed in float64 on the
twin from bench/torch_twins.py, in NHWC).

Zennit sees the twins as its canonized torchvision ResNet would be seen:
- BatchNorm merged into the preceding convolution (NamedMergeBatchNorm,
  with the merged BatchNorm made exactly the identity: `ExactMergeBatchNorm`);
- each residual sum a `zennit.layer.Sum` module (the norm rule), as Zennit's
  ResNet canonizer makes it;
- the global mean pooling an AdaptiveAvgPool2d module (the norm rule); the
  twins' functional `x.mean` would pass the plain gradient instead.
ReLU and max pooling stay functional: their gradient (Zennit's Pass rule for
ReLU is the same where relevance can be non-zero).
"""

import pathlib
import sys
import types

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F
from zennit import attribution
from zennit import canonizers
from zennit import composites
from zennit import layer as zlayer
from zennit import rules
from zennit import types as ztypes

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

# After the path is set: bench is not a package on the path otherwise.
from bench import torch_twins  # noqa: E402
from roar_jax.models import resnet  # noqa: E402
from roar_jax.models import small_cnn  # noqa: E402

OUT = REPO / "tests" / "references" / "lrp.npz"
MEAN = np.array([0.49, 0.48, 0.45], np.float32)
STD = np.array([0.25, 0.24, 0.26], np.float32)
SHAPE = (2, 16, 16, 3)
TARGETS = np.array([1, 7], np.int32)
EPSILON, GAMMA = 1e-6, 0.25


def randomized(variables, seed):
  """Variables with random biases, BatchNorm scales and statistics."""
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(jax.device_get(variables), sep="/")
  out = {}
  for name, value in flat.items():
    value = np.asarray(value, np.float32)
    if name.endswith("logits/kernel"):
      value = rng.normal(0, 0.3, value.shape)
    elif name.startswith("params") and name.endswith("bias"):
      value = rng.normal(0, 0.1, value.shape)
    elif name.endswith("scale"):
      value = rng.uniform(-0.5, 1.5, value.shape)
    elif name.endswith("/mean"):
      value = rng.normal(0, 0.3, value.shape)
    elif name.endswith("/var"):
      value = rng.uniform(0.5, 2.0, value.shape)
    out[name] = value.astype(np.float32)
  return out


def summed_forward(block, x):
  """A twin block whose residual sum is a zennit Sum module."""
  y = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
  skip = x if block.proj is None else block.proj(x)
  return F.relu(block.canonizer_sum(torch.stack([skip, y], dim=-1)))


class Pooled(nn.Module):
  """A twin with its global mean pooling as a module (see the docstring)."""

  def __init__(self, net):
    super().__init__()
    self.net = net
    self.pool = nn.AdaptiveAvgPool2d(1)
    for block in getattr(net, "blocks", []):
      block.canonizer_sum = zlayer.Sum()
      block.forward = types.MethodType(summed_forward, block)

  def forward(self, x):
    net = self.net
    if isinstance(net, torch_twins.SmallCNN):
      for conv in net.convs:
        x = F.max_pool2d(F.relu(conv(x)), 2)
    else:
      x = F.relu(net.stem_bn(net.stem(x)))
      for block in net.blocks:
        x = block(x)
    return net.fc(self.pool(x).flatten(1))


class ExactMergeBatchNorm(canonizers.NamedMergeBatchNorm):
  """NamedMergeBatchNorm whose emptied BatchNorm is exactly the identity.

  Zennit resets the merged BatchNorm to mean 0, variance 1 but keeps its
  eps, so it still scales by 1 / sqrt(1 + eps): 17 of them change the
  ResNet's logits (and so the starting relevance) by about 4e-5 relative.
  Its eps is set to 0 while merged.
  """

  def register(self, linears, batch_norm):
    super().register(linears, batch_norm)
    self.saved_eps = batch_norm.eps
    batch_norm.eps = 0.0

  def remove(self):
    super().remove()
    self.batch_norm.eps = self.saved_eps


def merge_map(net):
  """NamedMergeBatchNorm's (convolutions, BatchNorm) pairs of the ResNet."""
  if not hasattr(net, "blocks"):
    return []
  pairs = [(["net.stem"], "net.stem_bn")]
  for i, block in enumerate(net.blocks):
    p = f"net.blocks.{i}."
    pairs += [([p + "conv1"], p + "bn1"), ([p + "conv2"], p + "bn2")]
    if block.proj is not None:
      pairs.append(([p + "proj.0"], p + "proj.1"))
  return pairs


def zennit_composites(low, high, canon):
  eps_map = composites.layer_map_base() + [
      (ztypes.Linear, rules.Epsilon(epsilon=EPSILON))]
  return {
      "epsilon": composites.LayerMapComposite(eps_map, canonizers=canon),
      "epsilon_plus": composites.EpsilonPlus(epsilon=EPSILON,
                                             canonizers=canon),
      "epsilon_plus_flat": composites.EpsilonPlusFlat(epsilon=EPSILON,
                                                      canonizers=canon),
      "epsilon_gamma_box": composites.EpsilonGammaBox(
          low=low, high=high, epsilon=EPSILON, gamma=GAMMA,
          canonizers=canon),
      "epsilon_alpha2_beta1": composites.EpsilonAlpha2Beta1(
          epsilon=EPSILON, canonizers=canon),
  }


def references(name, variables, images, flax_logits):
  """{composite: relevance NHWC} from Zennit on the float64 twin."""
  net = torch_twins.build(name, traverse_util.unflatten_dict(
      {k: jnp.asarray(v) for k, v in variables.items()}, sep="/"))
  model = Pooled(net).double().eval()
  x = torch.tensor(np.transpose(images, (0, 3, 1, 2))).double()
  logits = model(x).detach().numpy()
  gap = np.abs(logits - flax_logits).max() / np.abs(flax_logits).max()
  print(f"{name}: twin vs Flax logits, relative {gap:.2e}")
  assert gap < 1e-5, gap
  low = torch.tensor(((0 - MEAN) / STD)).double().view(1, 3, 1, 1)
  high = torch.tensor(((1 - MEAN) / STD)).double().view(1, 3, 1, 1)
  low, high = low.expand_as(x).clone(), high.expand_as(x).clone()
  onehot = torch.eye(logits.shape[1]).double()[torch.tensor(TARGETS).long()]
  out = {}
  for comp_name, comp in zennit_composites(
      low, high, [ExactMergeBatchNorm(merge_map(net))]).items():
    with attribution.Gradient(model, comp) as attributor:
      _, rel = attributor(x.clone(), lambda o: onehot * o)
    out[comp_name] = np.transpose(rel.numpy(), (0, 2, 3, 1)).astype(np.float32)
    total = out[comp_name].sum((1, 2, 3))
    print(f"  {comp_name}: relevance sums {np.round(total, 3)}, logits "
          f"{np.round(logits[np.arange(len(TARGETS)), TARGETS], 3)}")
  return out


def main():
  rng = np.random.default_rng(0)
  pixels = rng.uniform(0, 1, SHAPE).astype(np.float32)
  images = (pixels - MEAN) / STD
  arrays = {"images": images, "targets": TARGETS, "mean": MEAN, "std": STD}
  models = {"cnn": small_cnn.SmallCNN(10, width=8),
            "resnet": resnet.ResNet18(10, stem="cifar", width=4)}
  for i, (name, module) in enumerate(models.items()):
    init = module.init(jax.random.key(i), jnp.asarray(images))
    variables = randomized(init, seed=i + 1)
    flax_logits = np.asarray(module.apply(
        traverse_util.unflatten_dict(
            {k: jnp.asarray(v) for k, v in variables.items()}, sep="/"),
        jnp.asarray(images)))
    arrays.update({f"{name}/var/{k}": v for k, v in variables.items()})
    for comp, rel in references(name, variables, images, flax_logits).items():
      arrays[f"{name}/lrp/{comp}"] = rel
  np.savez_compressed(OUT, **arrays)
  print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KB)")


if __name__ == "__main__":
  main()
