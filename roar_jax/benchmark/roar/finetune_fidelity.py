"""Fine-tune-once fidelity: deletion on a model that has seen masked images.

ROAR retrains a model per estimator, fraction and seed because a model
scored on images with removed values meets inputs it never saw; deletion on
the base model skips the retrain and pays with that distribution shift.
F-Fidelity (Zheng et al., ICLR 2025) and in-domain single deletion (NeurIPS
2024) take the middle road: fine-tune the base model ONCE on training images
masked at random (a random ranking, a random fraction, nothing an estimator
chose: no estimator's mask can leak into the model), then score every
estimator by deletion on the fine-tuned model, to which removed values are
familiar.

Here:
- the fine-tune starts from the base model's weights (a fresh optimizer),
  trains `finetune.steps` steps (default a quarter of `train.num_steps`,
  the schedule compressed alike) at `finetune.learning_rate_scale` times
  the base learning rate, on the training images degraded as a ROAR unit
  degrades them (`degradation.degrade`, mode 'roar') under a uniformly
  random ranking at a fraction drawn uniformly from
  `finetune.fraction_range` (default [0, 1]: every step of the deletion
  curve is in the fine-tune's range), filled as the deletion metric fills
  (`metrics.fill`: the grid's channel mean, or black);
  `finetune_fidelity_data.RandomMaskSource`;
- the scores are the configured curve metrics `finetune.metrics` (default
  deletion, F-Fidelity's MoRF score) of `metrics.score` on the fine-tuned
  model, with the options of `config.metrics`; metrics.csv names them
  `ff_<column>` (`ff_deletion_auc`), oriented like the metric they prefix,
  so agreement.csv ranks them against ROAR/KAR and the other metrics.

Artifacts: `W/finetune_fidelity/finetuned_model/` (a training workdir:
checkpoints, resumable; its provenance: the fine-tune's training fields and
options, the fill, inputs the base model and the channel mean; its
`finetune.json`: masked test accuracy before and after, clean test
accuracy, wall time) and `W/finetune_fidelity/<estimator>.json` (the
scores; inputs: the fine-tuned model and the estimator's rank store). Both
are reused while their fingerprints match.
"""

import copy
import dataclasses
import time
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging

from roar_jax import progress_eta
from roar_jax import provenance as provenance_lib
from roar_jax import training
from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import artifacts as artifacts_lib
from roar_jax.benchmark.roar import finetune_fidelity_data as data_lib
from roar_jax.benchmark.roar import finetune_fidelity_options as options_lib
from roar_jax.benchmark.roar import metric_inputs
from roar_jax.benchmark.roar import metric_options
from roar_jax.benchmark.roar import metric_plugins
from roar_jax.benchmark.roar import metric_scoring
from roar_jax.benchmark.roar import protocol_registry
from roar_jax.training import checkpoints
from roar_jax.training import steps as steps_lib

MODEL_DIR = "finetuned_model"
SUMMARY_FILE = "finetune.json"
MODEL_KEY = "__model__"  # The fine-tuned model's key in `plan_artifacts`.


def finetune_config(config, options: options_lib.Options):
  """The base model's training config, shortened to `options.steps` (the
  schedule compressed alike) at the scaled learning rate, under a seed of
  its own."""
  c = copy.deepcopy(config)
  base_steps = int(config.train.num_steps)
  scale = options.steps / base_steps
  with c.unlocked():
    # Not a retrain's seed (seed * 1000 + 1 + k) nor a probe's (997 - k).
    c.seed = int(config.seed) * 1000 + 500 + options.seed
    c.train.num_steps = options.steps
    c.train.learning_rate = (float(config.train.learning_rate)
                             * options.learning_rate_scale)
    c.train.warmup_steps = int(round(config.train.warmup_steps * scale))
    c.train.decay_steps = tuple(int(round(s * scale))
                                for s in config.train.decay_steps)
    c.train.checkpoint_every = min(
        int(config.train.checkpoint_every) or options.steps, options.steps)
  return c


def metric_options_of(config) -> metric_options.Options:
  """`config.metrics` with the names of `finetune.metrics`."""
  names = tuple(config.finetune.metrics)
  options = dataclasses.replace(metric_plugins.options_of(config),
                                names=names)
  metric_plugins.check(options)
  return options


def plan_artifacts(config, plan) -> dict[str, provenance_lib.Artifact]:
  """The fine-tuned model (key `MODEL_KEY`) and every estimator's record,
  with provenance; {} unless `finetune.enabled`."""
  if not options_lib.enabled(config):
    return {}
  return _artifacts(config, plan)


def _artifacts(config, plan) -> dict[str, provenance_lib.Artifact]:
  options = options_lib.Options.from_config(config)
  mopts = metric_options_of(config)
  fill = {"metrics.fill": mopts.fill, "explain.granularity":
          config.explain.granularity,
          "roar.fill_value": list(config.roar.fill_value)}
  inputs = {"base": plan.base.fingerprint}
  if mopts.fill == "channel_mean" and plan.channel_mean is not None:
    inputs["channel_mean"] = plan.channel_mean.fingerprint
  wd = plan.workdir
  model = provenance_lib.Artifact(
      "fine-tuned model", wd.sub(options_lib.FINETUNE_DIR, MODEL_DIR),
      provenance_lib.provenance(
          {**artifacts_lib.training_fields(finetune_config(config, options)),
           **options.fields(), **fill}, inputs))
  fields = {**mopts.fields(), "seed": config.seed,
            "roar.fill_value": list(config.roar.fill_value)}
  out = {MODEL_KEY: model}
  for est in config.explain.estimators:
    out[est] = provenance_lib.Artifact(
        "fine-tune fidelity record",
        wd.sub(options_lib.FINETUNE_DIR, f"{est}.json"),
        provenance_lib.provenance(fields, {
            "finetuned": model.fingerprint,
            "ranks": plan.ranks[est].fingerprint}))
  return out


def masked_source(config, source, fill) -> data_lib.RandomMaskSource:
  """The fine-tune's data: `source` randomly masked (`fill`: the metric's
  'channel_mean' fill, or None for 'black')."""
  options = options_lib.Options.from_config(config)
  draws = options.draws_for(config.train.batch_size,
                            source.info.num_examples["train"])
  channels = int(source.info.image_shape[-1])
  value = (np.zeros(channels) if config.metrics.fill == "black"
           else np.asarray(fill, np.float64))
  return data_lib.RandomMaskSource(
      source, fill_value=value, fraction_range=options.fraction_range,
      seed=finetune_config(config, options).seed,
      granularity=config.explain.granularity, draws=draws)


def _start_from_base(ft_config, folder: str, base_state) -> int:
  """Writes the base model's variables, with the fine-tune's fresh
  optimizer state, as step 0 of `folder`: the trainer resumes from it (and
  a resumed fine-tune from its own newest checkpoint).

  Returns:
    The step the fine-tune resumes from.
  """
  path = workdir_lib.join(folder, "checkpoints")
  mngr = checkpoints.manager(path)
  try:
    if mngr.latest_step() is None:
      # The trainer's state, built from the base state's variables: the
      # optimizer the trainer builds from the fine-tune's `train` section
      # (no initializer compiled only to be overwritten).
      tx = training.create_optimizer(
          provenance_lib.as_json(ft_config.train.to_dict()))
      state = steps_lib.TrainState.create(
          apply_fn=base_state.apply_fn, params=base_state.params, tx=tx,
          batch_stats=base_state.batch_stats)
      checkpoints.save(mngr, 0, state, wait=True)
    return int(mngr.latest_step() or 0)
  finally:
    mngr.close()


class _StepLog:
  """'finetune_fidelity: step 50 of 75, loss 0.41, 12 s elapsed, about 6 s
  left': one line per logged step of the fine-tune."""

  def __init__(self, total: int, start: int):
    self.eta = progress_eta.Eta(total, done=start)
    self.last = start

  def __call__(self, step: int, metrics: Mapping[str, float]):
    self.eta.update(step - self.last)
    self.last = step
    logging.info("finetune_fidelity: step %d of %d, loss %.4f; %s", step,
                 self.eta.total, float(metrics.get("loss", np.nan)),
                 self.eta.describe("step"))


def fine_tune(config, plan, source, fill, model: provenance_lib.Artifact
              ) -> dict[str, Any]:
  """Fine-tunes the base model once (or reads the finished fine-tune).

  Returns:
    The fine-tune's summary (`finetune.json`): 'masked_test_accuracy'
    ({'base', 'finetuned'}: on the randomly masked test split),
    'clean_test_accuracy' ({'base', 'finetuned'}), 'steps', 'draws',
    'wall_time_s', 'fingerprint'.

  Raises:
    workdir.WorkdirError: the folder holds a fine-tune of another config.
  """
  stale = provenance_lib.check([model])
  if stale:
    raise workdir_lib.WorkdirError(provenance_lib.describe(stale,
                                                           plan.workdir))
  summary_path = workdir_lib.join(model.path, SUMMARY_FILE)
  done = workdir_lib.read_json(summary_path, missing_ok=True)
  if done and done.get("fingerprint") == model.fingerprint:
    return done
  options = options_lib.Options.from_config(config)
  ft = finetune_config(config, options)
  masked = masked_source(config, source, fill)
  if jax.process_index() == 0:
    model.write()
  start = time.time()
  mesh = training.create_mesh()
  base = training.load_state(config, plan.base.path, source=source,
                             mesh=mesh)
  resume = _start_from_base(ft, model.path, base)
  low, high = options.fraction_range
  logging.info("finetune_fidelity: fine-tuning the base model for %d steps "
               "at %g x the learning rate on %d draws of the training split, "
               "%.0f-%.0f%% of each image masked at random", options.steps,
               options.learning_rate_scale, masked.draws, 100 * low,
               100 * high)
  result = training.train_and_evaluate(ft, model.path, source=masked,
                                       mesh=mesh,
                                       step_callback=_StepLog(options.steps,
                                                              resume))
  tuned = training.load_state(ft, model.path, source=source, mesh=mesh)
  summary = {
      "masked_test_accuracy": {
          "base": training.evaluate(base, masked, config, mesh, "test",
                                    desc="eval base")["accuracy"],
          "finetuned": result["test_accuracy"]},
      "clean_test_accuracy": {
          "base": training.load_metrics(plan.base.path)["test_accuracy"],
          "finetuned": training.evaluate(tuned, source, ft, mesh,
                                         "test")["accuracy"]},
      "steps": options.steps, "draws": masked.draws,
      "wall_time_s": time.time() - start, "fingerprint": model.fingerprint}
  if jax.process_index() == 0:
    workdir_lib.write_json(summary_path, summary)
  return summary


def _finetuned_model(config, folder: str, source):
  """The fine-tuned model as the estimators see it, on this process's
  devices (`metric_scoring.local_model`)."""
  ft = finetune_config(config, options_lib.Options.from_config(config))
  return metric_scoring.local_model(config, ft, folder, source)


def compute(config, plan, source, channel_mean=None
            ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
  """Fine-tunes once and scores every estimator whose record does not match
  yet; writes `W/finetune_fidelity/<estimator>.json`.

  Returns:
    ({estimator: record}, the fine-tune's summary).
  """
  mopts = metric_options_of(config)
  fill = metric_inputs.fill_value(config, mopts, source, channel_mean)
  artifacts = _artifacts(config, plan)
  model = artifacts.pop(MODEL_KEY)
  records = {est: a.matching() for est, a in artifacts.items()}
  todo = [est for est, r in records.items() if r is None]
  summary = fine_tune(config, plan, source, fill, model)
  if not todo:
    return records, summary
  scored = metric_scoring.score(config, plan, source,
                                _finetuned_model(config, model.path, source),
                                todo, options=mopts, fill=fill)
  for est, entry in scored.items():
    values = {"estimator": est, **entry}
    records[est] = (artifacts[est].write_record(values)
                    if jax.process_index() == 0
                    else artifacts[est].stamped(values))
  logging.info("finetune_fidelity: masked test accuracy %.4f (base) -> "
               "%.4f (fine-tuned); fine-tune %.0f s, scoring %.0f s",
               summary["masked_test_accuracy"]["base"],
               summary["masked_test_accuracy"]["finetuned"],
               summary["wall_time_s"],
               sum(r["wall_time_s"] for r in scored.values()))
  return records, summary


def rows_of(records: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
  """metrics.csv rows of the records, each metric's column prefixed."""
  return [{"estimator": est,
           "metric": options_lib.column(metric_plugins.get(name).column),
           "value": m["value"], "ci95_low": m["ci95_low"],
           "ci95_high": m["ci95_high"], "n": m["n"]}
          for est in records for name, m in records[est]["metrics"].items()]


def stored_rows(config, plan) -> list[dict[str, Any]]:
  """metrics.csv rows of the stored records that match the config (for
  `--mode=report`); [] unless `finetune.enabled`."""
  stored = {est: record for est, artifact in plan_artifacts(
      config, plan).items()
            if est != MODEL_KEY and (record := artifact.matching()) is not None}
  return rows_of(stored)


def summary(config, plan) -> dict[str, Any] | None:
  """The fine-tune's summary (`finetune.json`: masked and clean test
  accuracy before and after, wall time), None before it ran."""
  folder = _artifacts(config, plan)[MODEL_KEY].path
  return workdir_lib.read_json(workdir_lib.join(folder, SUMMARY_FILE),
                               missing_ok=True)


def _artifact_list(config, plan) -> list[provenance_lib.Artifact]:
  return list(plan_artifacts(config, plan).values())


@protocol_registry.register(
    "finetune_fidelity", needs=("base", "ranks"),
    writes=("metrics.csv",), enabled=options_lib.enabled,
    artifacts=_artifact_list, stored=stored_rows, metric_rows=True)
def _protocol(context: protocol_registry.Context) -> list[dict[str, Any]]:
  """Fine-tunes once and scores every estimator; its rows (process 0)
  join metrics.csv as `ff_` columns before the agreement table runs."""
  records, _ = compute(context.config, context.plan, context.source,
                       context.channel_mean)
  return rows_of(records) if jax.process_index() == 0 else []
