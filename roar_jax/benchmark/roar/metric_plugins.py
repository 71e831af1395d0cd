"""The built-in no-retrain metrics, registered on import, and the check of
`config.metrics.names` against the registry.

A new metric module is imported here (one line); `metric_registry.py` says
how one is written. Protocols are in `protocol_plugins.py`. This module stays
free of TensorFlow: config validation imports it before TensorFlow loads.
"""

from roar_jax import hints
from roar_jax.benchmark.roar import metric_options
from roar_jax.benchmark.roar import metric_registry
# Imported for their registrations, in the report's column order.
from roar_jax.benchmark.roar import curve_metrics  # pylint: disable=unused-import
from roar_jax.benchmark.roar import srg  # pylint: disable=unused-import
from roar_jax.benchmark.roar import infidelity  # pylint: disable=unused-import
from roar_jax.benchmark.roar import sensitivity  # pylint: disable=unused-import
from roar_jax.benchmark.roar import faithfulness  # pylint: disable=unused-import

# The registry with every built-in metric in it: what the stage, the tables,
# the figure and the agreement table read.
get = metric_registry.get
names = metric_registry.names
direction = metric_registry.direction
columns = metric_registry.columns


def options_of(config) -> metric_options.Options:
  """`config.metrics` as checked Options, its names checked against the
  registry."""
  options = metric_options.Options.from_config(config)
  check(options)
  return options


def check(options: metric_options.Options) -> None:
  """Raises ValueError naming `config.metrics.names` for an unknown,
  repeated or missing metric name."""
  names = tuple(options.names)
  known = list(metric_registry.names())
  if not names:
    raise ValueError(f"config.metrics.names is empty: name at least one of "
                     f"{known}")
  for n in names:
    if n not in known:
      raise ValueError(f"config.metrics.names: unknown metric {n!r}"
                       f"{hints.did_you_mean(n, known)} (known: {known})")
  if len(set(names)) != len(names):
    raise ValueError(f"config.metrics.names={list(names)} names a metric "
                     "more than once")
