"""`--mode=roar`: the whole benchmark, from the base model to the report.

base model -> explain (rank store) -> channel mean -> no-retrain scores ->
every retrain unit -> report. Each step skips what an earlier run finished, so
the mode can be stopped at any moment (Ctrl-C, kill -9) and rerun to
completion; no result is lost or counted twice.
"""

import os
from typing import Any, Callable

import jax
import tqdm
from absl import logging

from roar_jax import training
from roar_jax.benchmark.roar import explain
from roar_jax.benchmark.roar import grid
from roar_jax.benchmark.roar import report as report_lib
from roar_jax.data import sources

UnitRunner = Callable[..., dict[str, Any]]


def base_workdir(workdir: str) -> str:
  return os.path.join(workdir, "base")


def train_base(config, workdir: str, source) -> dict[str, Any]:
  """Trains the base model once; later runs read its stored metrics."""
  path = base_workdir(workdir)
  done = training.load_metrics(path)
  if done is not None and done.get("steps") == config.train.num_steps:
    return done
  return training.train_and_evaluate(config, path, source=source)


def run(config, workdir: str, *, run_unit: UnitRunner = grid.run_unit
        ) -> dict[str, Any]:
  """Runs every stage of the benchmark that is not finished yet.

  Args:
    config: the experiment config (`explain`, `roar` sections).
    workdir: the experiment workdir.
    run_unit: runs one retrain unit (replaceable, e.g. by a distributed
      executor).

  Returns:
    {'base': base metrics, 'report': report summary, 'units': number run}.
  """
  source = sources.get_source(config.data)
  base = train_base(config, workdir, source)
  logging.info("base model: test accuracy %.4f", base["test_accuracy"])
  explain.run(config, workdir, source=source)
  fill = grid.channel_mean(config, workdir, source)
  units = grid.all_units(config)
  keys = sorted({(u.estimator, u.mode, u.threshold) for u in units})
  grid.evaluate_no_retrain(
      config, workdir,
      lambda: training.load_state(config, base_workdir(workdir), source=source),
      source, fill, keys)
  todo = [u for u in units if not grid.is_done(workdir, u)]
  logging.info("grid: %d units, %d finished, %d to run", len(units),
               len(units) - len(todo), len(todo))
  executor = config.grid.get("executor", "sequential")
  if executor == "ray":
    # pylint: disable-next=g-import-not-at-top
    from roar_jax.benchmark.roar import ray_executor
    ray_executor.run_units(config, workdir, todo, run_unit=run_unit)
  elif executor == "sequential":
    for unit in tqdm.tqdm(todo, desc="retrain units", disable=None):
      run_unit(config, workdir, unit, source, fill)
  else:
    raise ValueError(f"config.grid.executor={executor!r}: expected "
                     "'sequential' or 'ray'")
  summary = None
  if jax.process_index() == 0:
    summary = report(config, workdir, base_accuracy=base["test_accuracy"])
  return {"base": base, "report": summary, "units": len(todo)}


def report(config, workdir: str, *, base_accuracy: float | None = None):
  """`--mode=report`: rebuilds the report from the stored results."""
  if base_accuracy is None:
    base = training.load_metrics(base_workdir(workdir))
    base_accuracy = base and base.get("test_accuracy")
  expected = None if config.roar.get("unit") else len(grid.all_units(config))
  out = report_lib.build_report(workdir, config=config,
                                expected_units=expected,
                                base_accuracy=base_accuracy)
  logging.info("report: %s (%d results%s)", os.path.join(workdir, "report"),
               out["num_results"], ", partial" if out["partial"] else "")
  return out
