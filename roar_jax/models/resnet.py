"""ResNet-18 and ResNet-50 v1.5 in Flax linen, as the ROAR paper trains them.

Follows the original benchmark code's ResNet (its `utils/resnet_model.py`):
the stride of a bottleneck block sits on its 3x3 convolution (v1.5), the last
BatchNorm scale of every block starts at zero (so each block starts as the
identity), BatchNorm momentum 0.9 and epsilon 1e-5, convolutions without bias,
and a dense head initialized from N(0, 0.01).

One departure: convolutions start from He et al.'s variance scaling for ReLU
networks (scale 2.0, fan-in, truncated normal), where the original code's
`tf.variance_scaling_initializer()` uses TensorFlow's default scale 1.0. Every
convolution here is followed by BatchNorm, which rescales its output in the
first steps, so the scale only sets where training starts; 2.0 keeps the
variance of activations through ReLUs (He et al. 2015).

`stem='imagenet'` is the 7x7/2 convolution plus 3x3/2 max-pool; `stem='cifar'`
is a single 3x3/1 convolution and no pooling, for 32x32 inputs.
"""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

Activation = Callable[[jnp.ndarray], jnp.ndarray]

_conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")


def _bn(dtype, zero_scale=False, name=None):
  return nn.BatchNorm(
      momentum=0.9, epsilon=1e-5, dtype=dtype, name=name,
      scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones)


class ResidualBlock(nn.Module):
  """A basic (two 3x3) or bottleneck (1x1, 3x3, 1x1 x4) residual block."""
  filters: int
  strides: int
  bottleneck: bool
  act: Activation
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    conv = lambda f, k, s, name: nn.Conv(
        f, (k, k), (s, s), padding="SAME" if k == 1 else ((k // 2, k // 2),) * 2,
        use_bias=False, kernel_init=_conv_init, dtype=self.dtype, name=name)
    norm = lambda name, zero=False: (
        lambda y: _bn(self.dtype, zero, name)(y, use_running_average=not train))
    out_filters = self.filters * (4 if self.bottleneck else 1)
    if self.bottleneck:
      y = self.act(norm("bn1")(conv(self.filters, 1, 1, "conv1")(x)))
      y = self.act(norm("bn2")(conv(self.filters, 3, self.strides, "conv2")(y)))
      y = norm("bn3", zero=True)(conv(out_filters, 1, 1, "conv3")(y))
    else:
      y = self.act(norm("bn1")(conv(self.filters, 3, self.strides, "conv1")(x)))
      y = norm("bn2", zero=True)(conv(out_filters, 3, 1, "conv2")(y))
    if x.shape[-1] != out_filters or self.strides != 1:
      x = norm("proj_bn")(conv(out_filters, 1, self.strides, "proj_conv")(x))
    return self.act(x + y)


class ResNet(nn.Module):
  """A ResNet with named stages; see the module docstring."""
  num_classes: int
  stage_sizes: Sequence[int]
  bottleneck: bool
  stem: str = "imagenet"
  width: int = 64
  act: Activation = nn.relu
  dtype: Any = jnp.float32

  def setup(self):
    if self.stem not in ("imagenet", "cifar"):
      raise ValueError(f"config.model.stem must be 'imagenet' or 'cifar', "
                       f"got {self.stem!r}")
    k, s = (7, 2) if self.stem == "imagenet" else (3, 1)
    self.stem_conv = nn.Conv(self.width, (k, k), (s, s),
                             padding=((k // 2, k // 2),) * 2, use_bias=False,
                             kernel_init=_conv_init, dtype=self.dtype)
    self.stem_bn = _bn(self.dtype)
    blocks = []
    for i, size in enumerate(self.stage_sizes):
      for j in range(size):
        blocks.append(ResidualBlock(
            self.width * 2**i, strides=2 if i > 0 and j == 0 else 1,
            bottleneck=self.bottleneck, act=self.act, dtype=self.dtype,
            name=f"stage{i + 1}_block{j + 1}"))
    self.blocks = blocks
    self.logits = nn.Dense(self.num_classes, dtype=self.dtype,
                           kernel_init=nn.initializers.normal(0.01))

  def layer_names(self) -> tuple[str, ...]:
    blocks = tuple(f"stage{i + 1}_block{j + 1}"
                   for i, size in enumerate(self.stage_sizes)
                   for j in range(size))
    return ("stem_conv", "stem_bn") + blocks + ("logits",)

  def features(self, x, train: bool = False):
    x = self.act(self.stem_bn(self.stem_conv(x), use_running_average=not train))
    if self.stem == "imagenet":
      x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
    for block in self.blocks:
      x = block(x, train)
    return x

  def head(self, f, train: bool = False):
    del train
    return self.logits(jnp.mean(f, axis=(1, 2))).astype(jnp.float32)

  def __call__(self, x, train: bool = False):
    return self.head(self.features(x, train), train)


def ResNet18(num_classes: int, **kwargs) -> ResNet:  # pylint: disable=invalid-name
  return ResNet(num_classes, stage_sizes=(2, 2, 2, 2), bottleneck=False,
                **kwargs)


def ResNet50(num_classes: int, **kwargs) -> ResNet:  # pylint: disable=invalid-name
  return ResNet(num_classes, stage_sizes=(3, 4, 6, 3), bottleneck=True,
                **kwargs)
