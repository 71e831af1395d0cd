r"""roar_jax command line: one stage of the pipeline per --mode.

  python -m roar_jax.main --config=configs/toy.py --workdir=/tmp/roar_toy \
      --mode=train

Modes: train (the base model), explain (saliency maps -> rank store), roar
(everything, up to the report), report (rebuild the report from the results),
sanity (the sanity checks). Every mode reads and writes under --workdir and can
be interrupted and rerun: finished work is skipped.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from roar_jax import validate  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for all outputs.")
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "explain", "roar", "report", "sanity"],
    "Which stage to run.")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str, mode: str):
  """Runs one mode; the library entry point behind the command line."""
  validate.validate(config, mode)
  # pylint: disable=g-import-not-at-top
  if config.data.name == "synthetic_linear":
    from roar_jax.benchmark import synthetic_linear
    out = synthetic_linear.run(config, workdir)
    print(f"report: {os.path.join(workdir, 'report')}")
    return out
  if mode == "train":
    from roar_jax import training
    result = training.train_and_evaluate(config, os.path.join(workdir, "base"))
    print(f"test accuracy: {result['test_accuracy']:.4f} "
          f"({result['num_test_examples']} images, {result['steps']} steps)")
    return result
  from roar_jax import benchmark
  if mode == "explain":
    return benchmark.explain.run(config, workdir)
  if mode == "roar":
    out = benchmark.roar.run(config, workdir)
    print(f"report: {os.path.join(workdir, 'report')}")
    return out
  if mode == "report":
    return benchmark.roar.report(config, workdir)
  return benchmark.sanity.run(config, workdir)


def _parse_flags(argv):
  """Parses flags; a bad --config.<field> override exits with one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"flag error: {e}")
  except (AttributeError, KeyError) as e:
    # ml_collections reports an unknown field from deep inside ConfigDict;
    # name the field instead of showing its stack.
    field = str(e).strip("\"'")
    bad = [a for a in argv[1:] if a.startswith("--config.") and field in a]
    sys.exit(f"config error: {' '.join(bad) or field}: the config has no "
             f"field {field!r}")
  except (TypeError, ValueError) as e:
    sys.exit(f"config error: {e}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  try:
    run(_CONFIG.value, _WORKDIR.value, _MODE.value)
  except validate.ConfigError as e:
    sys.exit(f"config error: {e}")


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
