"""Small convolutional networks: the toy model and the sanity-check CNN and MLP.

Every model here follows the project's model contract:
- fields `num_classes` and `act` (the activation, swappable, so that the saliency
  module can run the same weights with a guided ReLU);
- `__call__(x, train=False) -> logits`; the convolutional ones also expose
  `features` (the output of the last convolutional block) and `head`, with
  `head(features(x)) == __call__(x)`, which GradCAM needs;
- `layer_names()`: the top-level parameter collections, ordered from input to
  output (the sanity checks re-initialize layers by these names).
"""

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

Activation = Callable[[jnp.ndarray], jnp.ndarray]


def max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
  """2x2 max pooling with stride 2 (VALID), as elementwise maxima.

  The same values as `nn.max_pool(x, (2, 2), (2, 2))`. Its gradient is an
  elementwise select that XLA fuses, where nn.max_pool's select_and_scatter
  runs slowly on CPU: the toy train step takes 2.2-2.4x less time this way
  (bench/pooling.py). At an exact tie inside a window the gradient is split
  among the tied inputs instead of all going to the first; both are valid
  subgradients.

  Args:
    x: [B, H, W, C]; an odd last row or column is dropped, as VALID does.

  Returns:
    [B, H // 2, W // 2, C].
  """
  h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
  # The four strided corners of every window, not a reshape: slicing keeps
  # the batch axis's sharding under explicitly sharded meshes, where a reshape
  # that splits H and W cannot infer it.
  corners = [x[:, i:h:2, j:w:2] for i in (0, 1) for j in (0, 1)]
  return jnp.maximum(jnp.maximum(corners[0], corners[1]),
                     jnp.maximum(corners[2], corners[3]))


class SmallCNN(nn.Module):
  """conv3x3(w)-act-pool, conv3x3(2w)-act-pool, conv3x3(4w)-act-pool, GAP, dense.

  With width 32 this is the small CNN of the saliency speed anchors
  (20.6 MFLOP per 32x32 image forward).
  """
  num_classes: int
  width: int = 32
  act: Activation = nn.relu
  dtype: Any = jnp.float32

  def setup(self):
    conv = lambda f: nn.Conv(f, (3, 3), padding="SAME", dtype=self.dtype)
    self.conv1 = conv(self.width)
    self.conv2 = conv(2 * self.width)
    self.conv3 = conv(4 * self.width)
    self.logits = nn.Dense(self.num_classes, dtype=self.dtype)

  def layer_names(self) -> tuple[str, ...]:
    return ("conv1", "conv2", "conv3", "logits")

  def features(self, x, train: bool = False):
    del train  # No dropout or BatchNorm: train and eval behave alike.
    x = max_pool_2x2(self.act(self.conv1(x)))
    x = max_pool_2x2(self.act(self.conv2(x)))
    return self.act(self.conv3(x))

  def head(self, f, train: bool = False):
    del train
    f = max_pool_2x2(f)
    return self.logits(jnp.mean(f, axis=(1, 2))).astype(jnp.float32)

  def __call__(self, x, train: bool = False):
    return self.head(self.features(x, train), train)


class SanityCNN(nn.Module):
  """The MNIST CNN of Adebayo et al. (2018), App. B.

  conv5x5(32)-act-pool2, conv5x5(64)-act-pool2, fc(1024)-act, fc(num_classes),
  SAME padding. `features` is the second convolution's activation (the layer
  the paper's GradCAM reads).
  """
  num_classes: int
  act: Activation = nn.relu
  dtype: Any = jnp.float32

  def setup(self):
    self.conv1 = nn.Conv(32, (5, 5), padding="SAME", dtype=self.dtype)
    self.conv2 = nn.Conv(64, (5, 5), padding="SAME", dtype=self.dtype)
    self.fc1 = nn.Dense(1024, dtype=self.dtype)
    self.logits = nn.Dense(self.num_classes, dtype=self.dtype)

  def layer_names(self) -> tuple[str, ...]:
    return ("conv1", "conv2", "fc1", "logits")

  def features(self, x, train: bool = False):
    del train
    x = max_pool_2x2(self.act(self.conv1(x)))
    return self.act(self.conv2(x))

  def head(self, f, train: bool = False):
    del train
    f = max_pool_2x2(f)
    f = self.act(self.fc1(f.reshape(f.shape[0], -1)))
    return self.logits(f).astype(jnp.float32)

  def __call__(self, x, train: bool = False):
    return self.head(self.features(x, train), train)


class SanityMLP(nn.Module):
  """The MNIST MLP of Adebayo et al. (2018): 2500-1500-500 hidden units.

  It has no convolutional block, hence no `features`/`head` (no GradCAM).
  """
  num_classes: int
  hidden: tuple[int, ...] = (2500, 1500, 500)
  act: Activation = nn.relu
  dtype: Any = jnp.float32

  def setup(self):
    self.fcs = [nn.Dense(h, dtype=self.dtype, name=f"fc{i + 1}")
                for i, h in enumerate(self.hidden)]
    self.logits = nn.Dense(self.num_classes, dtype=self.dtype)

  def layer_names(self) -> tuple[str, ...]:
    return tuple(f"fc{i + 1}" for i in range(len(self.hidden))) + ("logits",)

  def __call__(self, x, train: bool = False):
    del train
    x = x.reshape(x.shape[0], -1)
    for fc in self.fcs:
      x = self.act(fc(x))
    return self.logits(x).astype(jnp.float32)
