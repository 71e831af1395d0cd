"""Scoring the test split with the registered metrics: one pass over the
images for every metric and estimator, the per-image values gathered over
processes and summarized into record entries.

`score` is the metrics stage's work without its records: `metrics.compute`
writes the base model's; a protocol that scores another model (the
fine-tuned one of fine-tune-once fidelity) writes its own.
"""

import time
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from absl import logging

from roar_jax import progress_eta
from roar_jax import saliency
from roar_jax import training
from roar_jax.benchmark.roar import explain as explain_lib
from roar_jax.benchmark.roar import metric_inputs
from roar_jax.benchmark.roar import metric_maps
from roar_jax.benchmark.roar import metric_registry
from roar_jax.benchmark.roar.metric_options import Options
from roar_jax.data import rank_store as rank_store_lib
from roar_jax.data import synthetic


def local_model(config, load_config, folder: str, source) -> saliency.Model:
  """A stored model as the estimators see it (`explain.explainable`), on
  this process's devices: it is replicated over every process's devices,
  and the metrics run on this process's alone.

  Args:
    config: the experiment config (its data normalization).
    load_config: the config that trained the model (its architecture).
    folder: the model's training folder.
    source: the dataset (its shapes).
  """
  module, variables = training.load_model(load_config, folder, source=source)
  variables = jax.tree.map(
      lambda a: np.asarray(a.addressable_data(0))
      if isinstance(a, jax.Array) else a, variables)
  return explain_lib.explainable(config, module, variables)


def _merged(parts: Mapping[str, list[np.ndarray]], options: Options
            ) -> dict[str, np.ndarray]:
  """This process's per-image values joined with every other process's.

  A process without images still takes part in the gather, with empty
  arrays of the series' widths (`Metric.widths`); all values travel as
  float64.
  """
  widths = {}
  for name in options.names:
    widths.update(metric_registry.get(name).widths(options))
  return {k: metric_inputs.gather(np.concatenate(
      [np.zeros((0,) + widths[k])] + list(parts.get(k, [])),
      dtype=np.float64)) for k in sorted(widths)}


def summarize(per_image: Mapping[str, np.ndarray], options: Options,
              names: Sequence[str] | None = None) -> dict[str, Any]:
  """Every configured metric's record entry from the per-image values of
  all images (`Metric.summarize`).

  Args:
    per_image: {series: [N, ...]} over all images.
    options: the metric options.
    names: the metrics to summarize (default: `options.names`).
  """
  return {name: metric_registry.get(name).summarize(per_image, options)
          for name in (options.names if names is None else names)}


def score(config, plan, source, model: saliency.Model,
          estimators: Sequence[str], *, options: Options, fill
          ) -> dict[str, dict[str, Any]]:
  """Scores `estimators` on the test split with `model`: the configured
  metrics of `options` (one pass over the images for all of them).

  Args:
    config: the experiment config.
    plan: the grid's artifacts (the rank store is read from its workdir).
    source: the undegraded dataset.
    model: the model to score, as the estimators see it.
    estimators: the names to score.
    options: the metric options (`metric_plugins.options_of`).
    fill: the 'channel_mean' fill (`metric_inputs.fill_value`), or None.

  Returns:
    {estimator: {'metrics': {metric: entry}, 'num_images', 'wall_time_s'}}.
  """
  stage = _Stage(config, options, model,
                 metric_maps.maps_fn(config, model, source), fill,
                 rank_store_lib.RankStore(plan.workdir.root))
  start = time.time()
  per_image, count = _per_image(config, source, options, estimators, stage)
  elapsed = time.time() - start
  logging.info("metrics: %d test images x %d estimators in %.1f s", count,
               len(estimators), elapsed)
  out = {}
  for est in estimators:
    merged = _merged(per_image[est], options)
    out[est] = {
        "metrics": summarize(merged, options, stage.names_for(est)),
        "num_images": int(len(merged["target"]) if "target" in merged
                          else len(next(iter(merged.values())))),
        "wall_time_s": elapsed / len(estimators)}
  return out


class _Stage:
  """What every batch of the metrics stage shares."""

  def __init__(self, config, options, model, maps_fn, fill, store):
    self.config, self.options, self.model = config, options, model
    self.maps_fn, self.fill, self.store = maps_fn, fill, store
    self.metrics = [metric_registry.get(n) for n in options.names]
    self.toy = config.data.name == "toy"

  def batch(self, est: str, rows) -> metric_registry.Batch:
    """The Batch of `est` over `rows` ({'image', 'label', 'index'})."""
    needs = {n for m in self.metrics for n in m.needs}
    config = self.config
    return metric_registry.Batch(
        est, rows["image"], rows["label"], rows["index"], self.model.logits,
        self.options, config,
        levels=(self.store.lookup(est, "test", rows["index"])
                if "ranks" in needs else None),
        masks=(synthetic.toy_masks(config.data.toy, "test")[rows["index"]]
               if "masks" in needs and self.toy else None),
        fill_value=self.fill, mean=config.data.mean, std=config.data.std,
        seed=config.seed,
        maps_fn=(self.maps_fn if metric_maps.has_maps(config, est)
                 else None))

  def names_for(self, est: str) -> list[str]:
    """The configured metrics that score `est` (not those that need maps
    where it has none)."""
    maps = metric_maps.has_maps(self.config, est)
    return [m.name for m in self.metrics if maps or "maps" not in m.needs]

  def scores(self, batch: metric_registry.Batch) -> dict[str, np.ndarray]:
    """Every configured metric's per-image series of the batch (a metric
    that needs maps is skipped for an estimator without them)."""
    out = {}
    for metric in self.metrics:
      if "maps" in metric.needs and batch.maps_fn is None:
        continue
      out.update(metric.per_image(batch))
    return out


def _per_image(config, source, options: Options, todo, stage: _Stage):
  """Every estimator's per-image values of this process's test images.

  Returns:
    ({estimator: {series: [per-batch arrays]}}, number of images).
  """
  per_image: dict[str, dict[str, list[np.ndarray]]] = {e: {} for e in todo}
  count = 0
  # One step per image and estimator: a bar on a terminal, a log line with
  # the time left every 30 s without one (the stage can take minutes).
  with progress_eta.Bar(metric_inputs.num_local_images(source, options) * len(todo),
                        "metrics", noun="image-estimator pair",
                        unit="img") as bar:
    for rows in metric_inputs.test_batches(config, source, options, rows=1024):
      for i, est in enumerate(todo):
        for k, v in stage.scores(stage.batch(est, rows)).items():
          per_image[est].setdefault(k, []).append(v)
        bar.update(len(rows["index"]), f"{est} on test images {count}-"
                   f"{count + len(rows['index'])} (estimator {i + 1} of "
                   f"{len(todo)})")
      count += len(rows["index"])
  return per_image, count
