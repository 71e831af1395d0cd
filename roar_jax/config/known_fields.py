"""Which fields a config may hold: those of `defaults.base_config()`, and
the open sections and per-model, per-dataset and per-stage options beyond
them; and the error every config check raises."""

from typing import Any, Mapping

from roar_jax import hints
from roar_jax.config import defaults as defaults_lib


class ConfigError(ValueError):
  """A config field has a bad value; the message names the field."""


# Fields beyond `defaults.base_config()` that a config may add; any other new
# field is a typo (a config file can assign one that no flag could).
# Sections the user fills with names of their own:
_OPEN_SECTIONS = ("grid.ray_env_vars", "grid.ray_resources")
# Options of one model or one dataset, `model.<name>.*` and `data.<name>.*`,
# which the model and the dataset builder check:
_NAMED_SUBSECTIONS = ("model", "data")
# Sections and fields of one stage or dataset, which that one checks:
_STAGE_SECTIONS = ("sanity", "linear")
_EXTRA_FIELDS = ("data.max_missing_fraction",)  # Of Birdsnap.


def check(config):
  """Refuses a field the defaults do not have, as a flag override would.

  A config file runs Python, so `c.train.num_stepz = 5` adds a field where
  `--config.train.num_stepz=5` is refused; without this check the typo
  passes and the default runs.

  Raises:
    ConfigError: naming the first unknown field, with the closest known one.
  """
  _check_section(config.to_dict(), defaults_lib.base_config().to_dict(), "")


def _check_section(given: Mapping[str, Any], known: Mapping[str, Any],
                   prefix: str):
  for key, value in given.items():
    field = prefix + key
    if key in known:
      if (isinstance(value, Mapping) and isinstance(known[key], Mapping)
          and field not in _OPEN_SECTIONS):
        _check_section(value, known[key], field + ".")
      continue
    section = prefix.rstrip(".")
    if (field in _EXTRA_FIELDS or (not prefix and key in _STAGE_SECTIONS)
        or (section in _NAMED_SUBSECTIONS and isinstance(value, Mapping))):
      continue
    hint = hints.did_you_mean(key, known, show=lambda k: prefix + k)
    raise ConfigError(f"config.{field}: the config has no such field (set in "
                      f"the config file?){hint}")
