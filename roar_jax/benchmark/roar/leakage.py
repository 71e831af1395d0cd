"""The mask-leakage probe (ROAD, Rong et al. 2022, `mask_leakage.py`).

With a constant fill the degraded image shows which positions were removed,
and with them what the estimator found important, which may tell the class
by itself: a model retrained on ROAR's images can score without seeing a
single informative value. The probe measures that: for each (estimator, mode,
threshold) of the grid, a classifier of the base architecture is trained on
the binary removal mask alone (the image replaced by its mask: removed
positions white, kept ones black, every channel alike for pixel rankings)
and evaluated on the masks of the test split. Its accuracy, beside chance (the
frequency of the test split's most common class), is the class information
the mask alone carries.

Training is short (`metrics.leakage_steps`, default a quarter of the base
model's steps; the learning-rate schedule is compressed alike) and uses the
training config of the base model otherwise. A short training is noisy, so
every probe trains `metrics.leakage_seeds` classifiers (default 3), each its
own initialization and data order, and reports their mean with a Student-t
95% interval: a difference between two probes reads as leakage only where
the intervals allow it. The data order does not depend on the number of
processes, so a probe seed trains on the same batches on any layout (only
the order of the cross-device sums may differ). Each probe leaves its folder
`W/leakage/<dataset name>/seed<k>/` per seed (checkpoints: resumable) and its
record `W/leakage/<dataset name>.json` (with provenance: reused while it
matches);
`W/report/leakage.csv` has one row per probe: estimator, mode, threshold,
mask_only_accuracy (the mean over the probe seeds), chance, num_probe_seeds,
ci95_low, ci95_high, accuracy_by_seed (space-separated, seed 0 first).
"""

import copy
import functools
from typing import Any, Mapping

import jax
import numpy as np
import tensorflow as tf
from absl import logging

from roar_jax import levels as levels_lib
from roar_jax import progress_eta
from roar_jax import provenance as provenance_lib
from roar_jax import training
from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import artifacts as artifacts_lib
from roar_jax.benchmark.roar import statistics
from roar_jax.benchmark.roar import protocol_registry
from roar_jax.data import rank_store as rank_store_lib
from roar_jax.data import source_protocol as source_lib

LEAKAGE_DIR = "leakage"
CSV_COLUMNS = ("estimator", "mode", "threshold", "mask_only_accuracy",
               "chance", "num_probe_seeds", "ci95_low", "ci95_high",
               "accuracy_by_seed")


class MaskSource:
  """The removal masks of a degradation as a Source of uint8 images.

  Image = 255 where the degradation removes the value, 0 where it keeps it;
  a pixel ranking's mask is repeated over the channels.
  """

  def __init__(self, base, ranks, *, estimator: str, mode: str,
               threshold: float, batch_size: int = 256):
    self.base = base
    self.ranks = (ranks if isinstance(ranks, rank_store_lib.RankStore)
                  else rank_store_lib.RankStore(ranks))
    self.estimator = estimator
    self.mode = levels_lib.check_mode(mode)
    self.threshold = float(threshold)
    levels_lib.threshold_level(threshold)
    self._batch_size = batch_size
    channels = int(base.info.image_shape[-1])
    split = next(iter(base.info.num_examples))
    self.level_shape = self.ranks.level_shape(estimator, split)
    self.info = source_lib.DatasetInfo(
        name=f"{base.info.name}/{estimator}/{mode}/{self.threshold:g}/mask",
        num_classes=base.info.num_classes,
        image_shape=tuple(self.level_shape[:2]) + (channels,),
        num_examples=dict(base.info.num_examples),
        class_names=base.info.class_names)

  def masks(self, split: str, indices) -> np.ndarray:
    """uint8 [b, H, W, C] mask images of some images of a split."""
    levels = self.ranks.lookup(self.estimator, split, indices)
    removed = levels_lib.removal_mask(levels, threshold=self.threshold,
                                       mode=self.mode)
    if removed.ndim == 3:
      removed = np.repeat(removed[..., None], self.info.image_shape[-1], -1)
    return removed.astype(np.uint8) * 255

  def load(self, split: str, *, process_index: int = 0,
           process_count: int = 1) -> tf.data.Dataset:
    ds = self.base.load(split, process_index=process_index,
                        process_count=process_count)
    # Not converted by autograph (no temp file left: data/pipeline.py).
    ds = ds.map(tf.autograph.experimental.do_not_convert(
        lambda ex: {"label": ex["label"], "index": ex["index"]}))
    fn = functools.partial(self.masks, split)
    shape = list(self.info.image_shape)

    @tf.autograph.experimental.do_not_convert
    def apply(ex):
      image = tf.numpy_function(fn, [ex["index"]], tf.uint8, stateful=False)
      image.set_shape([None] + shape)
      return {**ex, "image": image}

    return ds.batch(self._batch_size).map(
        apply, num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True).unbatch()


def num_probe_seeds(config) -> int:
  """How many classifiers each probe trains (`metrics.leakage_seeds`)."""
  return int(config.metrics.leakage_seeds)


def probe_config(config, probe_seed: int = 0):
  """The base model's training config, shortened to `metrics.leakage_steps`
  (0: a quarter of `train.num_steps`), on mask images in [-1, 1], for probe
  seed `probe_seed` (its own initialization and data order)."""
  c = copy.deepcopy(config)
  mc = config.get("metrics") or {}
  base_steps = int(config.train.num_steps)
  steps = int(mc.get("leakage_steps", 0) or max(1, base_steps // 4))
  scale = steps / base_steps
  with c.unlocked():
    # Counting down from 997: not any retrain's seed (seed * 1000 + 1 + k).
    c.seed = int(config.seed) * 1000 + 997 - int(probe_seed)
    c.data.eval_resize = None  # The masks have the model's geometry.
    c.data.augment = "none"
    channels = len(tuple(config.data.mean))
    c.data.mean = (0.5,) * channels
    c.data.std = (0.5,) * channels
    c.train.num_steps = steps
    c.train.warmup_steps = int(round(config.train.warmup_steps * scale))
    c.train.decay_steps = tuple(int(round(s * scale))
                                for s in config.train.decay_steps)
    c.train.checkpoint_every = min(int(config.train.checkpoint_every) or steps,
                                   steps)
  return c


def chance(source, split: str = "test") -> float:
  """The frequency of the split's most common class."""
  counts = np.zeros(source.info.num_classes, np.int64)
  for batch in source.load(split).batch(4096).as_numpy_iterator():
    counts += np.bincount(batch["label"], minlength=len(counts))
  return float(counts.max() / max(counts.sum(), 1))


def train_probe(config, masks: MaskSource, folder: str) -> dict[str, Any]:
  """Trains and evaluates the classifiers of one probe under `folder`
  (`seed<k>/` each, resumable).

  Returns:
    {'accuracy_by_seed': [test accuracy of probe seed k], 'steps',
     'num_test_examples'}.
  """
  results = [training.train_and_evaluate(
      probe_config(config, k), workdir_lib.join(folder, f"seed{k}"),
      source=masks) for k in range(num_probe_seeds(config))]
  return {"accuracy_by_seed": [r["test_accuracy"] for r in results],
          "steps": results[0]["steps"],
          "num_test_examples": results[0]["num_test_examples"]}


def seed_summary(accuracies) -> dict[str, Any]:
  """Mean, Student-t 95% interval (NaN for one seed) and the per-seed
  accuracies of one probe, as its record and CSV row hold them."""
  acc = np.asarray(accuracies, np.float64)
  std = acc.std(ddof=1) if len(acc) > 1 else np.nan
  low, high = statistics.t_interval(acc.mean(), std, len(acc))
  return {"mask_only_accuracy": float(acc.mean()),
          "num_probe_seeds": len(acc), "ci95_low": float(low),
          "ci95_high": float(high),
          "accuracy_by_seed": [float(a) for a in acc]}


def plan_artifacts(config, plan) -> dict[tuple[str, str, float],
                                         tuple[provenance_lib.Artifact,
                                               provenance_lib.Artifact]]:
  """(folder, record) of every probe of the grid, with provenance.

  Fields: the probe's training config, the mode and the threshold; input:
  the estimator's rank store. Pass them to `provenance.settle`.
  """
  train = artifacts_lib.training_fields(probe_config(config))
  out = {}
  # The mask does not depend on the fill: one probe serves every fill.
  for key in plan.removals():
    est, mode, thr = key
    name = workdir_lib.unit_name(est, mode, thr)
    fields = {**train, "mode": mode,
              "threshold_percent": levels_lib.threshold_level(thr),
              "probe_seeds": num_probe_seeds(config)}
    inputs = {"ranks": plan.ranks[est].fingerprint}
    record = provenance_lib.provenance(fields, inputs)
    out[key] = (
        provenance_lib.Artifact("leakage probe",
                                plan.workdir.sub(LEAKAGE_DIR, name), record),
        provenance_lib.Artifact("leakage record",
                                plan.workdir.sub(LEAKAGE_DIR, name + ".json"),
                                record))
  return out


def run(config, plan, source) -> list[dict[str, Any]]:
  """Trains every probe of the grid that has no matching record, and writes
  W/report/leakage.csv (process 0). Returns its rows."""
  store = rank_store_lib.RankStore(plan.workdir.root)
  base_chance = None
  rows = []
  probes = plan_artifacts(config, plan)
  records = {key: rec.matching() for key, (_, rec) in probes.items()}
  eta = progress_eta.Eta(sum(r is None for r in records.values()))
  for (est, mode, thr), (folder, rec) in probes.items():
    record = records[(est, mode, thr)]
    if record is None:
      if base_chance is None:
        base_chance = chance(source)
      if jax.process_index() == 0:
        folder.write()
      masks = MaskSource(source, store, estimator=est, mode=mode,
                         threshold=thr)
      _log_probe_start(eta, est, mode, thr)
      result = train_probe(config, masks, folder.path)
      eta.update()
      record = {"estimator": est, "mode": mode, "threshold": thr,
                **seed_summary(result["accuracy_by_seed"]),
                "chance": base_chance, "steps": result["steps"],
                "num_test_examples": result["num_test_examples"]}
      record = (rec.write_record(record) if jax.process_index() == 0
                else rec.stamped(record))
      logging.info("leakage %s %s %.2f: mask-only accuracy %.4f [%.4f, "
                   "%.4f] (chance %.4f)", est, mode, thr,
                   record["mask_only_accuracy"], record["ci95_low"],
                   record["ci95_high"], base_chance)
    rows.append(_row(record))
  if jax.process_index() == 0:
    write_csv(plan.workdir, rows)
  return rows


def _log_probe_start(eta: progress_eta.Eta, est: str, mode: str,
                     thr: float):
  """'leakage: probe 3 of 12 (gradient roar 0.90), 2 min elapsed, about 9
  min left': one line per probe, which trains for a while."""
  left = eta.seconds_left()
  logging.info("leakage: probe %d of %d (%s %s %.2f), %s", eta.done + 1,
               eta.total, est, mode, thr,
               "ETA after the first probe" if left is None else
               f"{progress_eta.format_duration(eta.elapsed())} elapsed, "
               f"about {progress_eta.format_duration(left)} left")


def _row(record) -> dict[str, Any]:
  """The CSV row of a probe's record; the per-seed accuracies as one
  space-separated field."""
  row = {k: record[k] for k in CSV_COLUMNS}
  row["accuracy_by_seed"] = " ".join(f"{a:.6g}"
                                     for a in record["accuracy_by_seed"])
  return row


def write_csv(wd: workdir_lib.Workdir, rows):
  workdir_lib.write_csv(
      wd.report("leakage.csv"),
      [{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()}
       for r in rows], CSV_COLUMNS)


def stored_rows(config, plan) -> list[dict[str, Any]]:
  """The rows of the stored probes that match the config (report mode)."""
  rows = []
  for _, rec in plan_artifacts(config, plan).values():
    record = rec.matching()
    if record is not None:
      rows.append(_row(record))
  return rows


def as_table(rows) -> Mapping[tuple[str, str, float], float]:
  return {(r["estimator"], r["mode"], r["threshold"]): r["mask_only_accuracy"]
          for r in rows}


def _enabled(config) -> bool:
  return config.get("metrics") is None or bool(
      config.metrics.get("leakage", True))


def _artifacts(config, plan) -> list[provenance_lib.Artifact]:
  return [a for pair in plan_artifacts(config, plan).values() for a in pair]


@protocol_registry.register("leakage", needs=("base", "ranks"),
                            writes=("leakage.csv",), enabled=_enabled,
                            artifacts=_artifacts, stored=stored_rows)
def _protocol(context: protocol_registry.Context) -> list[dict[str, Any]]:
  """The probe as a protocol: every probe of the grid, leakage.csv."""
  return run(context.config, context.plan, context.source)
