"""Start-up validation of a config: fail in one line that names the field.

Everything here runs before any data is read or any model is compiled, so a
typo costs a second, not a crashed job an hour later.
"""

import os

import jax

from roar_jax import models

DATASETS = ("toy", "cifar10", "fashion_mnist", "imagenet2012", "food101",
            "birdsnap")


class ConfigError(ValueError):
  """A config field has a bad value; the message names the field."""


def _require(ok: bool, message: str):
  if not ok:
    raise ConfigError(message)


def validate(config, mode: str = "train"):
  """Checks the fields that `mode` will use.

  Args:
    config: the experiment ConfigDict.
    mode: the stage about to run.

  Raises:
    ConfigError: naming the first bad field or path.
  """
  del mode  # Every stage trains or reads a trained model: all checks apply.
  _require(config.model.name in models.MODELS,
           f"config.model.name={config.model.name!r} is not a known model; "
           f"known: {sorted(models.MODELS)}")
  _require(config.data.name in DATASETS,
           f"config.data.name={config.data.name!r} is not a known dataset; "
           f"known: {sorted(DATASETS)}")
  for field in ("path", "manual_dir"):
    path = config.data.get(field)
    _require(path is None or os.path.exists(os.path.expanduser(path)),
             f"config.data.{field}: {path} does not exist")
  devices = jax.device_count()
  for field in ("batch_size", "eval_batch_size"):
    value = config.train[field]
    _require(isinstance(value, int) and value > 0 and value % devices == 0,
             f"config.train.{field}={value} must be a positive multiple of "
             f"the number of devices ({devices})")
  _require(config.train.num_steps > 0,
           f"config.train.num_steps={config.train.num_steps} must be > 0")
  # Building the model checks its options (config.model.<name>.*).
  try:
    models.get_model(config.model, 2)
  except ValueError as e:
    raise ConfigError(str(e)) from None
