"""A CIFAR-class network that trains to high accuracy in a few CPU-minutes.

The design follows the fast CIFAR-10 recipes (Page's DAWNBench ResNet-9 and
Jordan's airbench): every convolution is followed by BatchNorm, each block
halves the resolution by pooling right after its first convolution (so most
convolutions run at the lower resolution), the head is a global max pool and
a bias-free linear layer whose logits are scaled down, and the recipe around
it (configs/cifar10_fast.py) uses label smoothing, Nesterov SGD with a
one-cycle learning rate and flip/translate augmentation. Widths are
(16, 32, 64) by default: 38 MFLOP per 32x32 image for a training step's
forward and backward (XLA's count), about 1,100 training images/s on 2 CPU
cores (bench/train.py).

The model follows the project's contract (see `small_cnn.py`): `act` is a
field (Guided Backprop and DeepLIFT swap it), `features` is the last block's
output and `head(features(x)) == __call__(x)` (GradCAM), and `layer_names()`
lists the top-level parameter collections from input to output.
"""

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from roar_jax.models.small_cnn import max_pool_2x2

Activation = Callable[[jnp.ndarray], jnp.ndarray]


def _bn(dtype, name: str) -> nn.BatchNorm:
  # Names start with "bn": the optimizer leaves BatchNorm out of weight decay
  # by name (training/optimizers.py).
  return nn.BatchNorm(momentum=0.9, epsilon=1e-5, dtype=dtype, name=name)


class FastBlock(nn.Module):
  """conv3x3 - pool2 - BN - act - conv3x3 - BN - act."""
  filters: int
  act: Activation
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    conv = lambda name: nn.Conv(self.filters, (3, 3), padding="SAME",
                                use_bias=False, dtype=self.dtype, name=name)
    norm = lambda y, name: _bn(self.dtype, name)(
        y, use_running_average=not train)
    x = self.act(norm(max_pool_2x2(conv("conv1")(x)), "bn1"))
    return self.act(norm(conv("conv2")(x), "bn2"))


class FastCNN(nn.Module):
  """stem conv3x3(w0)-BN-act, one FastBlock per width, global max pool, linear.

  Attributes:
    num_classes: outputs.
    widths: filters of each block; the stem has the first block's width.
    logit_scale: multiplies the logits. The fast recipes scale a bias-free
      head down (airbench: 1/9) so that the softmax starts soft.
    act: the activation.
    dtype: computation dtype.
  """
  num_classes: int
  widths: tuple[int, ...] = (16, 32, 64)
  logit_scale: float = 0.125
  act: Activation = nn.relu
  dtype: Any = jnp.float32

  def setup(self):
    self.stem_conv = nn.Conv(self.widths[0], (3, 3), padding="SAME",
                             use_bias=False, dtype=self.dtype)
    self.stem_bn = _bn(self.dtype, "stem_bn")
    self.blocks = [FastBlock(w, self.act, self.dtype, name=f"block{i + 1}")
                   for i, w in enumerate(self.widths)]
    self.logits = nn.Dense(self.num_classes, use_bias=False, dtype=self.dtype)

  def layer_names(self) -> tuple[str, ...]:
    return (("stem_conv", "stem_bn")
            + tuple(f"block{i + 1}" for i in range(len(self.widths)))
            + ("logits",))

  def features(self, x, train: bool = False):
    x = self.act(self.stem_bn(self.stem_conv(x), use_running_average=not train))
    for block in self.blocks:
      x = block(x, train)
    return x

  def head(self, f, train: bool = False):
    del train
    pooled = jnp.max(f, axis=(1, 2))
    return (self.logits(pooled) * self.logit_scale).astype(jnp.float32)

  def __call__(self, x, train: bool = False):
    return self.head(self.features(x, train), train)
