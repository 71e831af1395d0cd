"""`--mode=roar`: the whole benchmark, from the base model to the report.

base model -> explain (rank store) -> channel mean -> no-retrain scores ->
every retrain unit -> report. Each step skips what an earlier run finished
under the same fingerprint, so the mode can be stopped at any moment (Ctrl-C,
kill -9) and rerun to completion; no result is lost or counted twice, and no
result of another config is reused (`artifacts.check`, run by `open_run`
before any work).
"""

import dataclasses
import time
from typing import Any, Callable

import jax
from jax.experimental import multihost_utils
import tqdm
from absl import logging

from roar_jax import progress_eta
from roar_jax import provenance as provenance_lib
from roar_jax import report_folder
from roar_jax import training
from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import artifacts as artifacts_lib
from roar_jax.benchmark.roar import explain
from roar_jax.benchmark.roar import external_maps
from roar_jax.benchmark.roar import finetune_fidelity_options
from roar_jax.benchmark.roar import grid
from roar_jax.benchmark.roar import protocol_plugins
from roar_jax.benchmark.roar import metrics as metrics_lib
from roar_jax.benchmark.roar import report as report_lib
from roar_jax.benchmark.roar import report_page
from roar_jax.data import sources

UnitRunner = Callable[..., dict[str, Any]]


# `--mode=finetune_fidelity` is the metrics stage with the fine-tune on.
finetune_switched_on = finetune_fidelity_options.switched_on


def open_run(config, workdir, *, mode: str, recompute: bool = False
             ) -> artifacts_lib.Plan:
  """Checks the workdir against the config before any work is done.

  Stale artifacts (made under another config) stop the run with one line
  naming the changed fields, unless `recompute` moves them aside; with
  `recompute` a base model whose checkpoint does not restore (corrupt,
  missing) is moved aside too, to be trained again. Then `W/config.json`
  records the config as run.

  Args:
    config: the experiment config.
    workdir: the experiment workdir.
    mode: the stage about to run (recorded in config.json).
    recompute: move stale artifacts aside instead of stopping.

  Returns:
    The grid's Plan.

  Raises:
    workdir.WorkdirError: stale artifacts and not `recompute`.
  """
  plan = grid.plan_of(config, workdir)
  wd = plan.workdir
  if jax.process_index() == 0:
    # The old report and config.json describe the stale artifacts: they go
    # with them, not under the new run's.
    provenance_lib.settle([*plan.all(), *metric_artifacts(config, plan)], wd,
                          recompute=recompute,
                          with_them=(wd.report(), wd.config_file))
  _sync("stale artifacts settled")
  unreadable = recompute and unreadable_base(config, plan)
  _sync("base model checked")
  if jax.process_index() == 0:
    if unreadable:
      folder = provenance_lib.move_aside(
          [provenance_lib.Stale(plan.base, (), corrupt=unreadable)], wd)
      logging.warning("%s; moved it to %s to train it again", unreadable,
                      folder)
    workdir_lib.write_config(wd, config, mode)
  _sync("workdir checked")
  return plan


def _sync(name: str):
  if jax.process_count() > 1:
      multihost_utils.sync_global_devices(name)


def unreadable_base(config, plan: artifacts_lib.Plan) -> str:
  """Why the base model's checkpoint cannot be restored ('' if it can, or
  if there is none yet).

  A corrupt or missing checkpoint under a matching fingerprint is not stale
  to `settle`, so `--recompute` checks it here: restoring it (the reported
  step, its params checksum) is the one sure test.
  """
  metrics = training.load_metrics(plan.base.path)
  steps = workdir_lib.listdir(workdir_lib.join(plan.base.path, "checkpoints"))
  if metrics is None and not steps:
    return ""
  try:
    training.load_state(config, plan.base.path)
  except workdir_lib.WorkdirError as e:
    return str(e).split(";")[0]
  return ""


def metric_artifacts(config, plan: artifacts_lib.Plan
                     ) -> list[provenance_lib.Artifact]:
  """The no-retrain metric records and every registered protocol's planned
  artifacts (the leakage probes, ...): settled with the plan's, whether or
  not this run computes them, so a stale record never outlives its inputs."""
  return [*metrics_lib.plan_artifacts(config, plan).values(),
          *[a for name in protocol_plugins.names()
            for a in protocol_plugins.get(name).artifacts(config, plan)]]


def run_metrics(config, plan: artifacts_lib.Plan, source=None):
  """`--mode=metrics`: base model, rank store, channel mean, then the
  no-retrain metrics and the leakage probe (`metrics.run`)."""
  source = source or sources.get_source(config.data)
  external_maps.Maps(config, source)  # Checked before the base model trains.
  train_base(config, plan, source)
  explain.run(config, plan.workdir.root, source=source, plan=plan)
  fill = grid.channel_mean(config, plan, source)
  return staged_metrics(config, plan, source, fill)


def staged_metrics(config, plan: artifacts_lib.Plan, source, fill):
  """`metrics.run`, its report files swapped in whole (process 0), with
  summary.md and index.html of their own unless the grid's report holds
  them (`report_folder.has_grid_report`: --mode=report then shows them)."""
  pages = not report_folder.has_grid_report(plan.workdir)
  owns = report_folder.with_pages(report_folder.owns_metrics, pages)
  with report_folder.staged(plan.workdir, owns,
                            enabled=jax.process_index() == 0) as wd:
    out = metrics_lib.run(config, dataclasses.replace(plan, workdir=wd),
                          source, fill)
    if pages and jax.process_index() == 0:
      report_page.write_metrics_page(wd, config, source.info.num_classes)
  if not pages:
    logging.info("metrics: the grid's report shows the new tables after "
                 "--mode=report")
  return out


def train_base(config, plan: artifacts_lib.Plan, source) -> dict[str, Any]:
  """Trains the base model once; later runs read its stored metrics."""
  path = plan.base.path
  done = training.load_metrics(path)
  if done is not None and done.get("steps") == config.train.num_steps:
    return done
  if jax.process_index() == 0:
    plan.base.write()
  return training.train_and_evaluate(config, path, source=source)


def run(config, workdir, *, run_unit: UnitRunner = grid.run_unit,
        recompute: bool = False) -> dict[str, Any]:
  """Runs every stage of the benchmark that is not finished yet.

  Args:
    config: the experiment config (`explain`, `roar` sections).
    workdir: the experiment workdir.
    run_unit: runs one retrain unit, as `run_unit(config, plan, unit, source,
      channel_mean)` (replaceable, e.g. by a distributed executor). With
      `roar.batch_units` > 1 the local loop runs groups of that many units
      through `grid.run_units` instead, and a group of one through `run_unit`.
    recompute: move artifacts of another config aside instead of stopping.

  Returns:
    {'base': base metrics, 'report': report summary, 'units': number run}.
  """
  started = time.monotonic()  # The ETA line's elapsed time counts from here.
  plan = open_run(config, workdir, mode="roar", recompute=recompute)
  source = sources.get_source(config.data)
  external_maps.Maps(config, source)  # Checked before the base model trains.
  base = train_base(config, plan, source)
  logging.info("base model: test accuracy %.4f", base["test_accuracy"])
  explain.run(config, workdir, source=source, plan=plan)
  fill = grid.channel_mean(config, plan, source)
  grid.evaluate_no_retrain(
      config, plan,
      lambda: training.load_state(config, plan.base.path, source=source),
      source, fill)
  # One unit of a shared grid (`roar.unit`) leaves the metrics to
  # --mode=metrics, run once for the grid.
  if config.metrics.with_roar and not config.roar.unit:
    staged_metrics(config, plan, source, fill)
  units = list(plan.units)
  todo = [u for u in units if not grid.is_done(plan, u)]
  logging.info("grid: %d units, %d finished, %d to run", len(units),
               len(units) - len(todo), len(todo))
  eta = progress_eta.Eta(len(units), done=len(units) - len(todo),
                         started=started)
  if config.grid.executor == "ray":
    # pylint: disable-next=g-import-not-at-top
    from roar_jax.benchmark.roar import ray_executor
    ray_executor.run_units(config, workdir, todo, run_unit=run_unit, eta=eta)
  else:
    run_local_units(config, plan, todo, source, fill, run_unit=run_unit,
                    eta=eta)
  summary = None
  # One unit never replaces the grid's report: --mode=report builds it.
  if jax.process_index() == 0 and not config.roar.unit:
    summary = report(config, workdir, plan=plan,
                     base_accuracy=base["test_accuracy"],
                     num_classes=source.info.num_classes)
  return {"base": base, "report": summary, "units": len(todo)}


def run_local_units(config, plan: artifacts_lib.Plan, todo, source, fill, *,
                    run_unit: UnitRunner = grid.run_unit,
                    eta: progress_eta.Eta | None = None):
  """Runs the units in this process, `roar.batch_units` at a time, and logs
  the whole grid's progress after each group ('roar: 7/30 units done, 21 min
  elapsed, about 69 min left').

  `roar.batch_units` units train together in one program (a small model
  leaves an accelerator idle); a group of one is `run_unit`'s.
  """
  eta = eta or progress_eta.Eta(len(todo))
  size = int(config.roar.batch_units)
  groups = [todo[i:i + size] for i in range(0, len(todo), size)]
  if todo:
    logging.info("roar: %s", eta.describe("unit"))
  for group in tqdm.tqdm(groups, desc=f"retrain units ({size} at a time)",
                         disable=None):
    if len(group) == 1:
      run_unit(config, plan, group[0], source, fill)
    else:
      grid.run_units(config, plan, group, source, fill)
    eta.update(len(group))
    logging.info("roar: %s", eta.describe("unit"))


def verified_records(plan: artifacts_lib.Plan) -> list[dict[str, Any]]:
  """The result records stored under their planned fingerprints, each
  verified against its unit (`grid.verify_result`: an edited record stops
  the report in one line rather than enter it).

  A record written before the fill was a grid axis has no fill: its unit's
  (under the same fingerprint) is the fill it ran under. The threshold is
  the unit's, as the config writes it (0.13, not 0.125: both 13%).
  """
  records = []
  for unit in plan.results:
    record = plan.results[unit].matching()
    if record is not None:
      grid.verify_result(plan, unit, record)
      records.append({**record, "fill": unit.fill,
                      "threshold": unit.threshold})
  return records


def check_current(config, plan: artifacts_lib.Plan):
  """Refuses, like the other stages, to report from a workdir whose
  artifacts another config made (one line naming the changed fields);
  nothing is moved or written."""
  stale = provenance_lib.check([*plan.all(), *metric_artifacts(config, plan)])
  if stale:
    raise workdir_lib.WorkdirError(provenance_lib.describe(stale,
                                                           plan.workdir))


def report(config, workdir, *, plan: artifacts_lib.Plan | None = None,
           base_accuracy: float | None = None,
           num_classes: int | None = None):
  """`--mode=report`: rebuilds the report from the stored results.

  The config must be the one that made the workdir's artifacts (or narrow
  its grid): a changed field stops it in one line. Only results and
  no-retrain scores whose fingerprints match the config's plan are counted.
  The files are written to a staging folder and swapped in whole
  (`report_folder.staged`): an interrupted build leaves the old report.

  Raises:
    workdir.WorkdirError: artifacts of another config; or `roar.unit` is
      set (one unit never makes the grid's report).
  """
  if config.roar.get("unit"):
    raise workdir_lib.WorkdirError(
        f"roar.unit={config.roar.unit}: one unit does not make the grid's "
        f"report; run --mode=report without --config.roar.unit")
  plan = plan or grid.plan_of(config, workdir)
  check_current(config, plan)
  if num_classes is None:  # For the chance line.
    num_classes = sources.get_source(config.data).info.num_classes
  if base_accuracy is None:
    base = training.load_metrics(plan.base.path)
    base_accuracy = base and base.get("test_accuracy")
  records = verified_records(plan)
  no_retrain = {key: r["test_accuracy"] for key, a in plan.no_retrain.items()
                if (r := a.matching()) is not None}
  metric_records = {e: r for e, a in metrics_lib.plan_artifacts(
      config, plan).items() if (r := a.matching()) is not None}
  leakage_rows = protocol_plugins.get("leakage").stored(config, plan)
  with report_folder.staged(plan.workdir,
                            report_folder.owns_report_build) as wd:
    # metrics.png first: index.html embeds it.
    # Protocols that score other models add their stored metrics.csv rows.
    extra = [r for p in protocol_plugins.enabled(config) if p.metric_rows
             for r in p.stored(config, plan)]
    metric_rows = ((metric_records or extra) and metrics_lib.write_report(
        wd, metric_records, extra_rows=extra))
    # agreement.csv and leakage.csv too, before the pages that show them.
    out = report_lib.build_report(
        wd, records, no_retrain, config=config,
        expected_units=len(plan.results), base_accuracy=base_accuracy,
        num_classes=num_classes, leakage_rows=leakage_rows,
        metric_rows=metric_rows or None)
  logging.info("report: %s (%d results%s)", plan.workdir.report(),
               out["num_results"], ", partial" if out["partial"] else "")
  return out
