"""No-retrain metrics: deletion / insertion curves and ROAD's MoRF / LeRF.

Every metric reads the removal order of the rank store (level 0 = the most
important 1% of positions) and the base model; nothing is retrained.

- Deletion (Petsiuk et al. 2018): at fraction f = k/K, k = 0..K, the top-f
  positions are replaced by the fill (`metrics.fill`: the grid's channel mean,
  rounded to uint8 as the degraded splits are, 'black', or a Gaussian blur of
  the image); the curve is the softmax probability of the explained class,
  the class the model predicts on the clean image.
- Insertion: starts from the fully filled image (`metrics.insertion_start`
  'fill'), or from the blurred image ('blur', RISE's choice), and restores
  the top-f positions.
  Deletion at 0% and insertion at 100% are the clean image.
- ROAD (Rong et al. 2022): MoRF removes the top fraction t, LeRF the bottom
  fraction t (so LeRF at t keeps the top 1 - t), t in `metrics.road_thresholds`
  (default 10%, ..., 90%), filled by noisy linear imputation (the grid's
  'noisy_linear' fill, solved for the whole batch at once,
  `data/imputation.py`); the curve is the base model's accuracy on the true
  labels. The clean image is the curve's point at 0.

AUC: the trapezoid rule over the fractions, divided by the largest fraction
(1 for deletion / insertion, 0.9 for ROAD by default), i.e. the curve's mean
over [0, f_max]; computed per image, then averaged. Lower is better for
deletion and MoRF, higher for insertion and LeRF. Each value comes with a 95%
Student-t confidence interval over the images (docs/design.md, "Statistics").

Work is batched over images and curve steps in one jitted call per chunk
(`metrics.batch_size` model inputs at most), so memory stays flat whatever
the number of images. Each estimator's record (`W/metrics/<estimator>.json`)
carries its provenance (inputs: the base model and the estimator's rank
store; fields: the metric options) and is reused while its fingerprint
matches.
"""

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from roar_jax import levels as levels_lib
from roar_jax import provenance as provenance_lib
from roar_jax import saliency
from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import metric_figures
from roar_jax.benchmark.roar import metric_inputs
from roar_jax.benchmark.roar import metric_plugins
from roar_jax.benchmark.roar import metric_scoring
from roar_jax.benchmark.roar import protocol_plugins
from roar_jax.benchmark.roar import protocol_registry
from roar_jax.benchmark.roar.curves import auc, curves, mean_ci
from roar_jax.saliency import ranking
from roar_jax.benchmark.roar.metric_options import (
    CSV_COLUMNS, METRICS, METRICS_DIR, Options, auc_name)

# Re-exported: the metrics' public names live here, whatever module computes
# them.
score = metric_scoring.score
summarize = metric_scoring.summarize
__all__ = ["CSV_COLUMNS", "METRICS", "Options", "auc", "auc_name",
           "compute", "curves", "mean_ci", "plan_artifacts",
           "rank_maps", "run", "score", "summarize"]

# ----------------------------------------------------------------------------
# The stage: images from the test split, rankings from the rank store.


def record_path(wd: workdir_lib.Workdir, estimator: str) -> str:
  return wd.sub(METRICS_DIR, f"{estimator}.json")


def plan_artifacts(config, plan) -> dict[str, provenance_lib.Artifact]:
  """The metric record of every estimator, with its provenance.

  Fields: the metric options, the seed (ROAD's noise), the fill of deletion
  and insertion (the grid's pinned fill value); inputs: the base model, the
  estimator's rank store and, when the fill is the computed channel mean, its
  artifact. Pass them to `provenance.settle` with the plan's artifacts.
  """
  options = metric_plugins.options_of(config)
  fields = {**options.fields(), "seed": config.seed,
            "roar.fill_value": list(config.roar.fill_value)}
  inputs = {"base": plan.base.fingerprint}
  if options.fill == "channel_mean" and plan.channel_mean is not None:
    inputs["channel_mean"] = plan.channel_mean.fingerprint
  return {est: provenance_lib.Artifact(
      "metric record", record_path(plan.workdir, est),
      provenance_lib.provenance(fields, {**inputs,
                                         "ranks": plan.ranks[est].fingerprint}))
          for est in config.explain.estimators}


def compute(config, plan, source, channel_mean=None, *, logits_fn=None
            ) -> dict[str, dict[str, Any]]:
  """Computes every estimator's metrics whose record does not match yet.

  Reads the test split once for all estimators, in chunks (`metrics.
  batch_size` model inputs per jitted call), and writes
  `W/metrics/<estimator>.json` per estimator.

  Args:
    config: the experiment config (`config.metrics`, `config.explain`).
    plan: the grid's artifacts (`grid.plan_of`); the base model and the rank
      store must be complete.
    source: the undegraded dataset.
    channel_mean: the grid's fill (`grid.channel_mean`); None: computed here
      from the training split when `metrics.fill='channel_mean'`.
    logits_fn: the model to score (default: the base model of the plan).

  Returns:
    {estimator: record}.
  """
  options = metric_plugins.options_of(config)
  artifacts = plan_artifacts(config, plan)
  records = {est: a.matching() for est, a in artifacts.items()}
  todo = [est for est, r in records.items() if r is None]
  if not todo:
    return records
  model = (saliency.Model(logits=logits_fn) if logits_fn is not None
           else metric_scoring.local_model(config, config, plan.base.path,
                                           source))
  fill = metric_inputs.fill_value(config, options, source, channel_mean)
  scored = metric_scoring.score(config, plan, source, model, todo,
                                options=options, fill=fill)
  for est, entry in scored.items():
    values = {"estimator": est, **entry}
    records[est] = (artifacts[est].write_record(values)
                    if jax.process_index() == 0
                    else artifacts[est].stamped(values))
  return records


# ----------------------------------------------------------------------------
# The report.


def rows_of(records: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
  """metrics.csv rows: estimator, metric (its column, `Metric.column`),
  value, CI, n."""
  rows = []
  for est in records:
    for name, m in records[est]["metrics"].items():
      rows.append({"estimator": est,
                   "metric": metric_plugins.get(name).column,
                   "value": m["value"], "ci95_low": m["ci95_low"],
                   "ci95_high": m["ci95_high"], "n": m["n"]})
  return rows


def _fmt(v):
  return f"{v:.6g}" if isinstance(v, float) else v


def write_csv(wd: workdir_lib.Workdir, rows: Sequence[Mapping[str, Any]]):
  """W/report/metrics.csv from its rows."""
  workdir_lib.write_csv(wd.report("metrics.csv"),
                        [{k: _fmt(v) for k, v in r.items()} for r in rows],
                        CSV_COLUMNS)


def write_report(wd: workdir_lib.Workdir,
                 records: Mapping[str, Mapping[str, Any]], *,
                 extra_rows: Sequence[Mapping[str, Any]] = ()):
  """W/report/metrics.csv, metrics.png and metrics.pdf (`metric_figures`).

  Args:
    wd: the workdir (or the staged report's).
    records: {estimator: metric record} of the base model.
    extra_rows: metrics.csv rows of protocols that score other models
      (their stored rows, in `--mode=report`), appended to the CSV.

  Returns:
    metrics.csv's rows.
  """
  rows = rows_of(records) + list(extra_rows)
  write_csv(wd, rows)
  if records:
    metric_figures.write(wd, records, rows)
  return rows


def run(config, plan, source, channel_mean=None, *,
        results_rows: Sequence[Mapping[str, Any]] | None = None,
        logits_fn=None) -> dict[str, Any]:
  """The metrics stage: the registered metrics, then the enabled protocols
  (the leakage probe, the agreement table, ...), and their report files.

  Call it after the rank store and the channel mean exist (in `--mode=roar`
  before the retrain units: it costs little next to them).

  Args:
    config: the experiment config.
    plan: the grid's artifacts.
    source: the undegraded dataset.
    channel_mean: `grid.channel_mean(config, plan, source)`.
    results_rows: the ROAR/KAR rows of results.csv, if any, for agreement.
    logits_fn: the model to score (default: the plan's base model).

  Returns:
    {'metrics': metrics.csv rows, and each registered protocol's name: its
     rows ([] when the config does not run it)}; process 0 has the rows of
     the report files, the others [] for those computed on process 0 alone.
  """
  records = compute(config, plan, source, channel_mean, logits_fn=logits_fn)
  rows = (write_report(plan.workdir, records) if jax.process_index() == 0
          else None)
  context = protocol_registry.Context(config, plan, source, channel_mean,
                                      metric_rows=rows,
                                      results_rows=results_rows)
  out = {name: [] for name in protocol_plugins.names()}
  for protocol in protocol_plugins.enabled(config):
    out[protocol.name] = protocol.run(context)
    if protocol.metric_rows and rows is not None and out[protocol.name]:
      rows.extend(out[protocol.name])
      write_csv(plan.workdir, rows)
  return {"metrics": rows or [], **out}


def rank_maps(maps, *, key: jax.Array, granularity: str = "pixel",
              transform: str = "abs") -> jax.Array:
  """Removal-order levels of maps given directly, ties broken at random.

  The rank store breaks ties by position (deterministic rankings); a metric
  fed maps by hand (a notebook, the bench) should not read a tie as an
  order, so here equal scores fall in a random order (ROAD adds a tiny random
  tie-breaker for the same reason): a constant map is a random ranking.

  Args:
    maps: [B, H, W, C] saliency maps.
    key: a PRNG key for the tie-breaker.
    granularity: 'pixel' or 'value' (as `saliency.rank`).
    transform: 'abs', 'square' or 'signed'.

  Returns:
    uint8 levels [B, H, W] or [B, H, W, C].
  """
  s = ranking.scores(jnp.asarray(maps), granularity, transform)
  flat = s.reshape(s.shape[0], -1)
  tie = jax.random.uniform(key, flat.shape)

  def row(score, r):
    order = jnp.lexsort((r, -score))  # Score descending, then at random.
    n = score.shape[0]
    ranks = jnp.zeros((n,), jnp.int32).at[order].set(
        jnp.arange(n, dtype=jnp.int32))
    return (ranks * levels_lib.NUM_LEVELS) // n

  return jax.vmap(row)(flat, tie).astype(jnp.uint8).reshape(s.shape)

