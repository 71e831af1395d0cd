"""Model names used in configs, and the function that builds them."""

from typing import Any, Callable, Mapping

import flax.linen as nn

from roar_jax.models import resnet
from roar_jax.models import small_cnn

MODELS: Mapping[str, Callable[..., nn.Module]] = {
    "small_cnn": small_cnn.SmallCNN,
    "sanity_cnn": small_cnn.SanityCNN,
    "sanity_mlp": small_cnn.SanityMLP,
    "resnet18": resnet.ResNet18,
    "resnet50": resnet.ResNet50,
}


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
  if name not in MODELS:
    raise ValueError(f"config.model.name={name!r} is not a known model; "
                     f"known: {sorted(MODELS)}")
  kwargs = dict(model_config.get(name) or {})
  try:
    return MODELS[name](num_classes=num_classes, **kwargs)
  except TypeError as e:
    raise ValueError(f"config.model.{name}: bad field: {e}") from e
