"""PyTorch twins of the benches' Flax models, with the Flax weights copied in.

The small CNN (`roar_jax.models.SmallCNN(10)`) and ResNet-18 with the CIFAR
stem (`roar_jax.models.ResNet18(10, stem="cifar")`) as torch modules on NCHW
inputs, computing the same function as the Flax ones, so that Captum and other
torch libraries can be timed on the same network as ours. bench/saliency.py
checks that logits and input gradients agree before timing.

This module imports torch at the top: import it only where torch is wanted
(torch is an optional dependency of the benches).
"""

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


# ---------------------------------------------------------------------------
# The architectures.


class SmallCNN(nn.Module):
  """Three conv-ReLU-max-pool stages, global mean pool and a linear head."""

  def __init__(self, width: int = 32, num_classes: int = 10):
    super().__init__()
    sizes = ((3, width), (width, 2 * width), (2 * width, 4 * width))
    self.convs = nn.ModuleList([nn.Conv2d(i, o, 3, padding=1)
                                for i, o in sizes])
    self.fc = nn.Linear(4 * width, num_classes)

  def forward(self, x):
    for conv in self.convs:
      x = F.max_pool2d(F.relu(conv(x)), 2)
    return self.fc(x.mean(dim=(2, 3)))


class Block(nn.Module):
  """ResNet basic block; a 1x1 projection when the shape changes."""

  def __init__(self, cin, cout, stride):
    super().__init__()
    # eps = 1e-5 as in roar_jax/models/resnet.py's BatchNorm.
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout, eps=1e-5)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout, eps=1e-5)
    self.proj = None
    if stride != 1 or cin != cout:
      self.proj = nn.Sequential(
          nn.Conv2d(cin, cout, 1, stride, 0, bias=False),
          nn.BatchNorm2d(cout, eps=1e-5))

  def forward(self, x):
    y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    return F.relu((x if self.proj is None else self.proj(x)) + y)


class ResNet18(nn.Module):
  """ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool)."""

  def __init__(self, width: int = 64, num_classes: int = 10):
    super().__init__()
    self.stem = nn.Conv2d(3, width, 3, 1, 1, bias=False)
    self.stem_bn = nn.BatchNorm2d(width, eps=1e-5)
    blocks, cin = [], width
    for i in range(4):
      for j in range(2):
        cout = width * 2**i
        blocks.append(Block(cin, cout, 2 if i > 0 and j == 0 else 1))
        cin = cout
    self.blocks = nn.ModuleList(blocks)
    self.fc = nn.Linear(8 * width, num_classes)

  def forward(self, x):
    x = F.relu(self.stem_bn(self.stem(x)))
    for block in self.blocks:
      x = block(x)
    return self.fc(x.mean(dim=(2, 3)))


# The Flax names of ResNet18's blocks, in the order of `ResNet18.blocks`.
RESNET18_BLOCKS = tuple(f"stage{i + 1}_block{j + 1}"
                        for i in range(4) for j in range(2))


# ---------------------------------------------------------------------------
# Copying the Flax weights in.


def _tensor(array) -> torch.Tensor:
  return torch.tensor(np.asarray(array))


def set_conv(conv: nn.Conv2d, leaf: dict) -> None:
  """Copies a Flax conv's kernel (HWIO) and bias into a torch conv (OIHW)."""
  conv.weight.data = _tensor(np.transpose(np.asarray(leaf["kernel"]),
                                          (3, 2, 0, 1)))
  if "bias" in leaf:
    conv.bias.data = _tensor(leaf["bias"])


def set_dense(dense: nn.Linear, leaf: dict) -> None:
  """Copies a Flax Dense (kernel [in, out]) into a torch Linear ([out, in])."""
  dense.weight.data = _tensor(np.asarray(leaf["kernel"]).T.copy())
  dense.bias.data = _tensor(leaf["bias"])


def set_batch_norm(bn: nn.BatchNorm2d, leaf: dict, stats: dict) -> None:
  """Copies a Flax BatchNorm's scale, bias and running statistics."""
  bn.weight.data = _tensor(leaf["scale"])
  bn.bias.data = _tensor(leaf["bias"])
  bn.running_mean.data = _tensor(stats["mean"])
  bn.running_var.data = _tensor(stats["var"])


def set_block(block: Block, params: dict, stats: dict) -> None:
  """Copies one Flax ResNet block (and its projection, if any)."""
  set_conv(block.conv1, params["conv1"])
  set_batch_norm(block.bn1, params["bn1"], stats["bn1"])
  set_conv(block.conv2, params["conv2"])
  set_batch_norm(block.bn2, params["bn2"], stats["bn2"])
  if block.proj is not None:
    set_conv(block.proj[0], params["proj_conv"])
    set_batch_norm(block.proj[1], params["proj_bn"], stats["proj_bn"])


def small_cnn(params: dict) -> SmallCNN:
  """The SmallCNN twin holding a Flax SmallCNN's `params` (its width and
  classes read from their shapes)."""
  width, num_classes = np.shape(params["logits"]["kernel"])
  net = SmallCNN(width // 4, num_classes)
  for conv, name in zip(net.convs, ("conv1", "conv2", "conv3")):
    set_conv(conv, params[name])
  set_dense(net.fc, params["logits"])
  return net


def resnet18(params: dict, stats: dict) -> ResNet18:
  """The ResNet18 twin holding the Flax ResNet-18's params and batch stats
  (its width and classes read from their shapes)."""
  width, num_classes = np.shape(params["logits"]["kernel"])
  net = ResNet18(width // 8, num_classes)
  set_conv(net.stem, params["stem_conv"])
  set_batch_norm(net.stem_bn, params["stem_bn"], stats["stem_bn"])
  for block, name in zip(net.blocks, RESNET18_BLOCKS):
    set_block(block, params[name], stats[name])
  set_dense(net.fc, params["logits"])
  return net


def build(name: str, variables: dict) -> nn.Module:
  """The torch twin of a Flax model, in inference mode.

  Args:
    name: "cnn" for the SmallCNN(10); anything else for the ResNet18(10) with
      the CIFAR stem (as `bench/saliency.py`'s `build_flax`).
    variables: the Flax model's variables ("params", and "batch_stats" for the
      ResNet).

  Returns:
    The torch module, in eval mode (BatchNorm uses the copied statistics),
    with parameters that need no gradient: only input gradients are asked for.
  """
  if name == "cnn":
    net = small_cnn(variables["params"])
  else:
    net = resnet18(variables["params"], variables["batch_stats"])
  net.eval()
  for q in net.parameters():
    q.requires_grad_(False)
  return net
