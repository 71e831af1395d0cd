"""Experiment configs: the defaults of every section (`defaults`) and all
start-up validation (`validation`). Nothing is re-checked where a value is
used."""

from roar_jax.config.defaults import base_config, load, shared_path
from roar_jax.config.validation import ConfigError, validate
