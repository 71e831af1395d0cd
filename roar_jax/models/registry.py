"""Model names used in configs, the function that builds them, and
`register`, which adds a model of one's own.

A model is a flax.linen Module class (or any callable returning one) taking
`num_classes` and its options as keyword arguments, and following the
project's contract (see `small_cnn.py`): a field `act` (the activation, so
that Guided Backprop and DeepLIFT can swap it), `__call__(x, train=False)
-> logits`, and, for GradCAM, `features(x, train=False)` and
`head(f, train=False)`. A config names it as `config.model.name` and gives its
options in the sub-config of that name (`config.model.<name>.*`).
"""

import types
from typing import Any, Callable, Mapping

import flax.linen as nn

from roar_jax.models import fast_cnn
from roar_jax.models import resnet
from roar_jax.models import small_cnn

ModelFactory = Callable[..., nn.Module]

_MODELS: dict[str, ModelFactory] = {
    "small_cnn": small_cnn.SmallCNN,
    "sanity_cnn": small_cnn.SanityCNN,
    "sanity_mlp": small_cnn.SanityMLP,
    "fast_cnn": fast_cnn.FastCNN,
    "resnet18": resnet.ResNet18,
    "resnet50": resnet.ResNet50,
}
# A read-only view: models are added with `register`, never by mutation.
MODELS: Mapping[str, ModelFactory] = types.MappingProxyType(_MODELS)


def register(name: str, *, overwrite: bool = False):
  """A decorator that makes a model available to configs under `name`.

    @roar_jax.models.register("my_cnn")
    class MyCNN(nn.Module):
      num_classes: int
      width: int = 32
      act: Callable = nn.relu
      ...

  Call it in the config file (or a module the config file imports), so that
  every process that loads the config file registers it (the processes of a
  multi-host run do). Ray workers receive the config's values, not its file:
  a model of one's own there must be importable on the workers (a module of
  an installed package that registers it on import).

  Args:
    name: the value of `config.model.name` that selects the model.
    overwrite: replace a model already registered under `name`.

  Returns:
    The decorator; it returns the class unchanged.
  """
  if not isinstance(name, str) or not name.isidentifier():
    raise ValueError(f"models.register: name={name!r} must be an identifier "
                     "(it is also the config.model sub-config's name)")

  def decorator(factory: ModelFactory) -> ModelFactory:
    if name in _MODELS and _MODELS[name] is not factory and not overwrite:
      raise ValueError(f"models.register: a model named {name!r} exists; "
                       "pass overwrite=True to replace it")
    _MODELS[name] = factory
    return factory

  return decorator


def get_model(model_config: Mapping[str, Any], num_classes: int) -> nn.Module:
  """Builds the model a config names.

  Args:
    model_config: `config.model`: `name` picks the model; the sub-config of
      that name (for example `config.model.resnet18.stem`) holds its keyword
      arguments, so one config can carry the options of several models.
    num_classes: size of the output layer.

  Returns:
    An (unbound) flax.linen Module.
  """
  name = model_config.get("name")
  if name not in _MODELS:
    raise ValueError(f"config.model.name={name!r} is not a known model; "
                     f"known: {sorted(_MODELS)}")
  kwargs = dict(model_config.get(name) or {})
  try:
    return _MODELS[name](num_classes=num_classes, **kwargs)
  except TypeError as e:
    raise ValueError(f"config.model.{name}: bad field: {e}") from e
