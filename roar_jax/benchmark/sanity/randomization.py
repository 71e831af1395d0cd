"""Model parameter randomization (Adebayo et al. 2018, Sec. 3), on variables.

Everything here is a pure function of a variables pytree: a randomized model
is the trained `variables` with some layers' entries replaced, and every other
array is the very same object, so untouched layers are bit-identical.

Layers are the model's `layer_names()` (ordered input -> output, the top-level
keys of `variables['params']`). The two tests of the paper:

- cascading: randomize from the logits downward, cumulatively
  (`cascading_steps`: ('logits',), ('logits', 'fc1'), ...);
- independent: one layer at a time, the rest trained (`independent_steps`).

Re-initialization distributions (`INITS`):

- 'original' (default): the layer's own initializers, re-run. This is what
  the paper's released code does (it re-runs the variables' initializers).
  Layer i (its index in `layer_names()`) always draws from the key
  `jax.random.fold_in(key, i)`, so a layer gets the same new values in every
  step and in both tests, whatever else is randomized with it.
  One exception: a BatchNorm scale whose initializer gives zeros (the last
  BatchNorm of a ResNet v1.5 block, so that each block starts as the
  identity) is set to ones, the standard BatchNorm scale. Re-run as is, it
  would zero the residual branch and the "randomized" block would pass its
  input through: randomizing it would remove it, not randomize it.
- 'truncated_normal': every weight and bias of the layer from a normal of
  mean 0 and std `init_std` truncated at two standard deviations, the
  paper's App. B statement (std 0.01); leaf j of layer i draws from
  `fold_in(fold_in(key, i), j)`. Normalization layers (BatchNorm, LayerNorm)
  get their initializer's scale 1 and offset 0 instead: a scale drawn at
  std 0.01 multiplies a ResNet block's residual branch by about 0.01, so the
  "randomized" block would pass its input through almost unchanged.

BatchNorm running statistics (`batch_stats`, not trainable) are reset to the
layer's initial values (mean 0, variance 1) when `reset_batch_stats` (the
paper's text: "batch-norm variables" are re-initialized), or kept trained
(what the released code does, since it re-initializes trainable variables
only).
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INITS = ("original", "truncated_normal")
Variables = dict[str, Any]


def layer_names(module: nn.Module, variables: Variables) -> tuple[str, ...]:
  """The module's layers, input -> output, checked against its parameters.

  Args:
    module: a project model (it has `layer_names()`).
    variables: its variables (with a 'params' collection).

  Returns:
    The layer names, ordered from the input to the logits.

  Raises:
    ValueError: if the module has no `layer_names` or the names are not the
      top-level keys of `variables['params']`.
  """
  if not hasattr(module, "layer_names"):
    raise ValueError(f"model {type(module).__name__} has no layer_names(): "
                     "the sanity checks need its layers in order")
  names = tuple(module.layer_names())
  if "params" not in variables:
    raise ValueError("variables have no 'params' collection")
  if set(names) != set(variables["params"]) or len(set(names)) != len(names):
    raise ValueError(
        f"{type(module).__name__}.layer_names() = {names} must list each "
        f"top-level parameter key once; the parameters have "
        f"{sorted(variables['params'])}")
  return names


def cascading_steps(names: Sequence[str]) -> list[tuple[str, ...]]:
  """Layers randomized at each cascading step: from the top, cumulatively."""
  top_down = tuple(reversed(tuple(names)))
  return [top_down[:k] for k in range(1, len(top_down) + 1)]


def independent_steps(names: Sequence[str]) -> list[tuple[str, ...]]:
  """Layers randomized at each independent step: one, from the top down."""
  return [(name,) for name in reversed(tuple(names))]


@functools.lru_cache(maxsize=16)
def _jitted_init(module: nn.Module, input_shape: tuple[int, ...]):
  """module.init as a function of the key alone, compiled once per shape;
  zero-initialized BatchNorm scales come back as ones (`unit_zero_scales`)."""
  dummy = jnp.zeros((1, *input_shape), jnp.float32)

  def init(key):
    variables = dict(module.init(key, dummy))
    variables["params"] = unit_zero_scales(variables["params"])
    return variables
  return jax.jit(init)


def _check_init(init: str, input_shape):
  if init not in INITS:
    raise ValueError(f"init={init!r} is not a re-initialization "
                     f"distribution; known: {list(INITS)}")
  if init == "original" and input_shape is None:
    raise ValueError("init='original' re-runs the model's initializers and "
                     "needs input_shape=(H, W, C)")


def _reset_stats(stats):
  """BatchNorm's initial statistics: mean 0, variance 1 (by leaf name)."""
  def reset(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    return (jnp.ones_like(leaf) if name == "var" else jnp.zeros_like(leaf))
  return jax.tree_util.tree_map_with_path(reset, stats)


def fresh_layer(module: nn.Module, variables: Variables, layer: str,
                key: jax.Array, *, init: str = "original",
                input_shape: tuple[int, ...] | None = None,
                init_std: float = 0.01) -> dict[str, Any]:
  """New values for one layer, in every collection that holds it.

  Args:
    module: the model.
    variables: its (trained) variables; give the layer's structure.
    layer: one of `layer_names(module, variables)`.
    key: the randomization key of the whole test; the layer draws from
      `fold_in(key, index of the layer)`.
    init: 'original' or 'truncated_normal' (see the module docstring).
    input_shape: (H, W, C) of one input; needed by 'original'.
    init_std: std of 'truncated_normal'.

  Returns:
    collection name -> the layer's new subtree ('params', and 'batch_stats'
    if the layer has statistics: these come back at their initial values;
    `randomize` decides whether to use them).
  """
  _check_init(init, input_shape)
  names = layer_names(module, variables)
  if layer not in names:
    raise ValueError(f"unknown layer {layer!r}; {type(module).__name__} has "
                     f"{list(names)}")
  layer_key = jax.random.fold_in(key, names.index(layer))
  out = {}
  if init == "original":
    fresh = _jitted_init(module, tuple(int(d) for d in input_shape))(layer_key)
    for collection in ("params", "batch_stats"):
      if layer in variables.get(collection, {}):
        out[collection] = fresh[collection][layer]
    return out
  leaves, treedef = jax.tree.flatten(variables["params"][layer])
  norms = jax.tree.leaves(_normalization_leaves(variables["params"][layer]))
  new = [init_std * jax.random.truncated_normal(
      jax.random.fold_in(layer_key, j), -2.0, 2.0, jnp.shape(leaf),
      jnp.result_type(leaf)) for j, leaf in enumerate(leaves)]
  # A normalization layer's scale and offset take its initializer's values
  # (1 and 0): drawn at std 0.01, the scale would shrink a ResNet block's
  # residual branch to about 1% and leave the block a near-identity.
  new = [n if kind == "" else (jnp.ones_like(n) if kind == "scale"
                               else jnp.zeros_like(n))
         for n, kind in zip(new, norms)]
  out["params"] = jax.tree.unflatten(treedef, new)
  if layer in variables.get("batch_stats", {}):
    out["batch_stats"] = _reset_stats(variables["batch_stats"][layer])
  return out


def _normalization_leaves(params):
  """`params` with each leaf replaced by 'scale' or 'bias' where it belongs
  to a normalization layer (a module whose parameters are a `scale` and
  possibly a `bias`: BatchNorm, LayerNorm, GroupNorm), else by ''."""
  if not isinstance(params, dict):
    return ""
  if "scale" in params and set(params) <= {"scale", "bias"}:
    return {k: k for k in params}
  return {k: _normalization_leaves(v) for k, v in params.items()}


def unit_zero_scales(params):
  """`params` with every all-zero BatchNorm `scale` replaced by ones.

  A zero-initialized scale (ResNet v1.5's last BatchNorm of a block) makes
  the residual branch output exactly zero; ones is what a standard BatchNorm
  scale starts from, so the re-initialized block is random, not removed.
  """
  def fix(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    if name != "scale":
      return leaf
    return jnp.where(jnp.any(leaf != 0), leaf, jnp.ones_like(leaf))
  return jax.tree_util.tree_map_with_path(fix, params)


def randomize(module: nn.Module, variables: Variables, layers: Sequence[str],
              key: jax.Array, *, init: str = "original",
              input_shape: tuple[int, ...] | None = None,
              init_std: float = 0.01,
              reset_batch_stats: bool = True) -> Variables:
  """`variables` with `layers` re-initialized and everything else unchanged.

  Args:
    module: the model.
    variables: its trained variables (not modified).
    layers: names from `layer_names(module, variables)`, any order.
    key: the test's randomization key (layer i uses `fold_in(key, i)`).
    init: 'original' or 'truncated_normal'.
    input_shape: (H, W, C) of one input; needed by init='original'.
    init_std: std of init='truncated_normal'.
    reset_batch_stats: reset the layers' BatchNorm statistics too, or keep
      the trained ones.

  Returns:
    New variables (new top-level dicts; the untouched layers' arrays are the
    original objects).
  """
  _check_init(init, input_shape)
  names = layer_names(module, variables)
  unknown = [l for l in layers if l not in names]
  if unknown:
    raise ValueError(f"unknown layers {unknown}; {type(module).__name__} has "
                     f"{list(names)}")
  out = {c: dict(tree) for c, tree in variables.items()}
  for layer in dict.fromkeys(layers):
    fresh = fresh_layer(module, variables, layer, key, init=init,
                        input_shape=input_shape, init_std=init_std)
    out["params"][layer] = fresh["params"]
    if reset_batch_stats and "batch_stats" in fresh:
      out["batch_stats"][layer] = fresh["batch_stats"]
  return out


def changed_layers(before: Variables, after: Variables) -> tuple[str, ...]:
  """The top-level parameter keys whose arrays differ in any bit.

  Args:
    before, after: two variables pytrees of the same structure.

  Returns:
    The names, in `before['params']` order, of the layers with at least one
    array that is not bit-identical (in any collection).
  """
  changed = []
  for layer in before["params"]:
    for collection in before:
      if layer not in before[collection]:
        continue
      a = jax.tree.leaves(before[collection][layer])
      b = jax.tree.leaves(after[collection][layer])
      if len(a) != len(b) or any(
          np.asarray(x).tobytes() != np.asarray(y).tobytes()
          for x, y in zip(a, b)):
        changed.append(layer)
        break
  return tuple(changed)


def has_batch_stats(variables: Variables) -> bool:
  return bool(jax.tree.leaves(variables.get("batch_stats", {})))


def permute_labels(labels, seed) -> np.ndarray:
  """The data randomization test's labels: one fixed permutation of `labels`.

  Permuting (rather than drawing new labels) keeps every class count, so the
  random-label model sees the same label marginal as the true-label one.

  Args:
    labels: int [N] training labels.
    seed: anything `np.random.default_rng` takes.

  Returns:
    labels[perm] for a permutation drawn from `seed`, same dtype.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
  return labels[np.random.default_rng(seed).permutation(len(labels))]
