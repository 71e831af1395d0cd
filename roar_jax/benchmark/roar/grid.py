"""The ROAR/KAR retraining grid: units, their data, and running one unit.

A unit is one (estimator, mode, threshold, seed, fill): a model trained from
random initialization on the train split degraded by that estimator's ranking
and the fill, and evaluated on the equally degraded test split. Units are
independent: each has its own workdir (checkpoints, resumable) and leaves
exactly one result record when it finishes, which is also its completion
marker. Any machine can run any
unit, so many machines can share one grid.
"""

import copy
import dataclasses
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from roar_jax import levels as levels_lib
from roar_jax import provenance as provenance_lib
from roar_jax import training
from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import artifacts as artifacts_lib
from roar_jax.benchmark.roar import results as results_lib
from roar_jax.data import degradation as degrade_lib
from roar_jax.data import degraded as degraded_lib
from roar_jax.data import preprocess
from roar_jax.data import rank_store as rank_store_lib
from roar_jax.data import writer as writer_lib
from roar_jax.training import batched

MODES = levels_lib.MODES


@dataclasses.dataclass(frozen=True, order=True)
class Unit:
  estimator: str
  mode: str
  threshold: float
  seed: int
  fill: str = levels_lib.UNNAMED_FILL

  @property
  def name(self) -> str:
    return workdir_lib.unit_name(self.estimator, self.mode, self.threshold,
                                 self.seed, levels_lib.fill_suffix(self.fill))

  @property
  def key(self) -> tuple[str, str, float, str]:
    """(estimator, mode, threshold, fill): the degraded dataset it trains
    on; the units of every seed share it."""
    return (self.estimator, self.mode, self.threshold, self.fill)


def parse_unit(text: str, fills: tuple[str, ...]) -> Unit:
  """Parses `estimator/mode/threshold/seed[/fill]`, e.g. `gradient/roar/0.5/0`.

  Args:
    text: the unit, as `config.roar.unit` names it.
    fills: the grid's fills; the fill may be left out when there is one.
  """
  parts = text.split("/")
  form = ("expected 'estimator/mode/threshold/seed[/fill]', e.g. "
          "'gradient/roar/0.5/0'")
  if len(parts) not in (4, 5):
    raise ValueError(f"config.roar.unit={text!r}: {form}")
  if len(parts) == 4:
    if len(fills) != 1:
      raise ValueError(f"config.roar.unit={text!r}: the grid has fills "
                       f"{list(fills)}; name one, e.g. '{text}/{fills[0]}'")
    parts.append(fills[0])
  est, mode, thr, seed, fill = parts
  if fill not in fills:
    raise ValueError(f"config.roar.unit={text!r}: fill {fill!r} is not one "
                     f"of the grid's, {list(fills)} (config.roar.fill)")
  try:
    return Unit(est, mode, float(thr), int(seed), fill)
  except ValueError:
    raise ValueError(f"config.roar.unit={text!r}: threshold must be a number "
                     "and seed an integer") from None


def all_units(config) -> list[Unit]:
  """Every unit of the grid `config.roar` describes, or the one it names."""
  rc = config.roar
  fills = levels_lib.fills_of(rc.fill)
  if rc.get("unit"):
    return [parse_unit(rc.unit, fills)]
  return [Unit(e, m, float(t), s, f)
          for f in fills for e in config.explain.estimators
          for m in rc.modes for t in rc.thresholds
          for s in range(rc.num_seeds)]


def is_done(plan: artifacts_lib.Plan, unit: Unit) -> bool:
  """Whether the unit's result is stored under its planned fingerprint."""
  stored = plan.results[unit].stored()
  return bool(stored) and stored.get("fingerprint") == (
      plan.results[unit].fingerprint)


def plan_of(config, workdir) -> artifacts_lib.Plan:
  """The artifacts of the config's grid in `workdir`."""
  return artifacts_lib.plan(config, workdir_lib.as_workdir(workdir),
                            all_units(config))


def _degraded_image_config(config):
  """The data config for training on degraded images.

  The degraded images already have the model's input geometry (the maps were
  computed on the eval-preprocessed image), so the eval resize is not applied
  a second time; training augmentation still is.
  """
  data_config = copy.deepcopy(config.data)
  with data_config.unlocked():
    data_config.eval_resize = None
  return data_config


def degraded_source(config, plan: artifacts_lib.Plan, base_source,
                    key: tuple[str, str, float, str], channel_mean):
  """The degraded dataset of key = (estimator, mode, threshold, fill).

  `config.roar.degrade='on_the_fly'` masks images in the input pipeline from
  the rank store; 'write' materializes the dataset once as TFRecord files
  under `<workdir>/datasets/` (every process its own shards, metadata from
  process 0) and reads it back. Both give identical images.
  """
  estimator, mode, threshold, fill = key
  source = degraded_lib.DegradedSource(
      base_source, rank_store_lib.RankStore(plan.workdir.root),
      estimator=estimator, mode=mode, threshold=threshold,
      fill=fill, channel_mean=channel_mean, seed=config.seed,
      eval_geometry=lambda image: preprocess.eval_geometry(image, config.data))
  if config.roar.degrade == "on_the_fly":
    return source
  artifact = plan.datasets[key]
  out = artifact.path
  if jax.process_index() == 0 and not workdir_lib.exists(out):
    artifact.write()
  if jax.process_count() == 1:
    writer_lib.write_dataset(source, out)
  elif not writer_lib.is_complete(out):
    # Every process writes its own shards; process 0 writes the metadata once
    # all of them exist.
    multihost_utils.sync_global_devices(f"provenance {out}")
    writer_lib.write_dataset(source, out, process_index=jax.process_index(),
                             process_count=jax.process_count())
    multihost_utils.sync_global_devices(f"write {out}")
    if jax.process_index() == 0:
      writer_lib.write_metadata(out)
    multihost_utils.sync_global_devices(f"metadata {out}")
  return writer_lib.read_dataset(out)


def unit_config(config, unit: Unit):
  """The training config of one retrain: its own seed, geometry as stored."""
  c = copy.deepcopy(config)
  with c.unlocked():
    # Seed k of a grid never reuses the base model's seed.
    c.seed = int(config.seed) * 1000 + unit.seed + 1
    c.data = _degraded_image_config(config)
  return c


def run_unit(config, plan: artifacts_lib.Plan, unit: Unit, base_source,
             channel_mean, **train_kwargs) -> dict[str, Any]:
  """Retrains one unit (resuming it if interrupted) and stores its result.

  The unit's folder records its provenance before training starts, so an
  interrupted unit resumes only under the same fingerprint.

  Args:
    config: the experiment config.
    plan: the grid's artifacts (`plan_of`).
    unit: what to run.
    base_source: the undegraded dataset.
    channel_mean: the fill of `fill='channel_mean'`, [C] in pixel units
      (None when the grid has no such fill).
    **train_kwargs: passed to `training.train_and_evaluate`.

  Returns:
    The result record.
  """
  source = _unit_source(config, plan, unit, base_source, channel_mean)
  result = training.train_and_evaluate(
      unit_config(config, unit), plan.units[unit].path, source=source,
      **train_kwargs)
  return _store_result(config, plan, unit, result)


def run_units(config, plan: artifacts_lib.Plan, units: list[Unit],
              base_source, channel_mean, **train_kwargs
              ) -> list[dict[str, Any]]:
  """Retrains several units in one program (`training.batched`) and stores
  each one's result as `run_unit` does.

  The units share the config's model and recipe and differ in seed and
  degraded dataset; a unit interrupted earlier resumes alone. Same arguments
  as `run_unit`, with `units`; `train_kwargs` go to
  `batched.train_and_evaluate_many` (`step_callbacks`, one per unit; `mesh`).

  Returns:
    The result records, in the order of `units`.
  """
  sources = [_unit_source(config, plan, u, base_source, channel_mean)
             for u in units]
  results = batched.train_and_evaluate_many(
      [unit_config(config, u) for u in units],
      [plan.units[u].path for u in units], sources=sources, **train_kwargs)
  return [_store_result(config, plan, u, r) for u, r in zip(units, results)]


def _unit_source(config, plan: artifacts_lib.Plan, unit: Unit, base_source,
                 channel_mean):
  """The unit's degraded dataset, its folder's provenance written first."""
  source = degraded_source(config, plan, base_source, unit.key, channel_mean)
  if jax.process_index() == 0:
    plan.units[unit].write()
  return source


def _store_result(config, plan: artifacts_lib.Plan, unit: Unit,
                  result: dict[str, Any]) -> dict[str, Any]:
  """The unit's result record from its training metrics, stored."""
  record = plan.results[unit].stamped(
      {**dataclasses.asdict(unit), **result,
       "config_hash": results_lib.config_hash(config)})
  if jax.process_index() == 0:
    write_result(plan, unit, record)
  logging.info("unit %s: test accuracy %.4f", unit.name,
               record["test_accuracy"])
  return record


CHECKSUM_KEY = "record_checksum"
# What a record must agree on with its unit's own metrics.json.
_BOUND_TO_TRAINING = ("test_accuracy", "steps", "params_checksum")


def record_checksum(record) -> str:
  """A hash of a result record's values (all but the checksum itself)."""
  body = {k: v for k, v in record.items() if k != CHECKSUM_KEY}
  return provenance_lib.fingerprint(body)


def write_result(plan: artifacts_lib.Plan, unit: Unit, record):
  """Stores one finished retrain's record (atomically, once per unit),
  with a checksum over its values (`verify_result`)."""
  missing = [k for k in results_lib.REQUIRED_KEYS if k not in record]
  if missing:
    raise ValueError(f"result record of {unit.name} lacks keys {missing}")
  record = {k: v for k, v in record.items() if k != CHECKSUM_KEY}
  record[CHECKSUM_KEY] = record_checksum(provenance_lib.as_json(record))
  workdir_lib.write_json(plan.results[unit].path, record)


def verify_result(plan: artifacts_lib.Plan, unit: Unit, record):
  """Checks that a stored record is the one its unit's training wrote.

  The record names its unit and threshold level, its checksum matches its
  values (an edited accuracy does not; a record older than checksums has
  none and is let through with a warning), and where the unit's folder holds
  metrics.json, the accuracy, steps and parameter checksum agree with it.

  Raises:
    workdir.WorkdirError: one line naming the record and what disagrees.
  """
  path = plan.results[unit].path
  advice = ("; delete it (the unit is retrained on the next --mode=roar) "
            "or restore the record the run wrote")
  for field in ("estimator", "mode", "seed"):
    if record.get(field) != getattr(unit, field):
      raise workdir_lib.WorkdirError(
          f"{path}: {field}={record.get(field)!r} is not its unit's "
          f"({getattr(unit, field)!r}){advice}")
  threshold = record.get("threshold")
  if not isinstance(threshold, (int, float)) or levels_lib.threshold_level(
      threshold) != levels_lib.threshold_level(unit.threshold):
    raise workdir_lib.WorkdirError(
        f"{path}: threshold={threshold!r} is not its unit's "
        f"{unit.threshold!r} in whole percents{advice}")
  if CHECKSUM_KEY not in record:
    # Written before records carried one: only metrics.json can vouch.
    logging.warning("%s has no %s (an older record); checked against its "
                    "unit's metrics.json only", path, CHECKSUM_KEY)
  elif record[CHECKSUM_KEY] != record_checksum(record):
    raise workdir_lib.WorkdirError(
        f"{path}: its values do not match its {CHECKSUM_KEY} (edited after "
        f"the run wrote it?){advice}")
  trained = training.load_metrics(plan.units[unit].path)
  for key in _BOUND_TO_TRAINING if trained else ():
    if key in trained and record.get(key) != trained[key]:
      raise workdir_lib.WorkdirError(
          f"{path}: {key}={record.get(key)!r} differs from the unit's "
          f"{workdir_lib.join(plan.units[unit].path, 'metrics.json')} "
          f"({trained[key]!r}){advice}")


def evaluate_no_retrain(config, plan: artifacts_lib.Plan, base_state_fn,
                        base_source, channel_mean):
  """Scores the base model on each degraded test split (no retraining).

  Args:
    config: the experiment config.
    plan: the grid's artifacts; every `plan.no_retrain` record missing is
      written.
    base_state_fn: returns the base model's train state (called lazily, once).
    base_source: the undegraded dataset.
    channel_mean: fill values.
  """
  state = None
  mesh = training.create_mesh()
  for key, artifact in sorted(plan.no_retrain.items()):
    if workdir_lib.exists(artifact.path):
      continue  # `artifacts.check` let it through: its fingerprint matches.
    state = state or base_state_fn()
    source = degraded_source(config, plan, base_source, key, channel_mean)
    eval_config = copy.deepcopy(config)
    with eval_config.unlocked():
      eval_config.data = _degraded_image_config(config)
    est, mode, thr, fill = key
    metrics = training.evaluate(state, source, eval_config, mesh, "test",
                                desc=f"no-retrain {est} {mode} {thr:.2f} "
                                f"{fill}")
    if jax.process_index() == 0:
      artifact.write_record({
          "estimator": est, "mode": mode, "threshold": thr, "fill": fill,
          "test_accuracy": metrics["accuracy"]})


def channel_mean(config, plan: artifacts_lib.Plan, base_source):
  """The training split's per-channel mean (computed once, then read back),
  or the constants `config.roar.fill_value` pins; None for a fill without
  one."""
  if config.roar.get("fill_value"):
    return tuple(float(v) for v in config.roar.fill_value)
  artifact = plan.channel_mean
  if artifact is None:
    return None
  if jax.process_index() == 0 and not workdir_lib.exists(artifact.path):
    mean = degrade_lib.channel_mean(base_source)
    artifact.write_record({"channel_mean": [float(v) for v in mean],
                           "units": "pixel [0, 255]"})
    logging.info("channel mean of %s: %s (stored in %s)",
                 base_source.info.name, np.round(mean, 3).tolist(),
                 artifact.path)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("channel mean")
  stored = workdir_lib.read_json(artifact.path)
  return np.asarray(stored["channel_mean"], dtype=np.float64)
