"""Do the metrics agree? Rank correlation of the estimator rankings.

Each metric ranks the estimators; ROAD (Rong et al. 2022) and Meta-Rank
report how far two metrics' rankings agree with Spearman's rho. Scores are
oriented so that higher is better before ranking: deletion and MoRF areas
are negated (a good ranking makes them small), as is ROAR's accuracy (the
mean over the grid's thresholds of the retrained accuracy); insertion, LeRF
and KAR count as they are. ROAR and KAR under a fill other than the channel
mean are metrics of their own, e.g. `roar_noisy_linear`. rho = 1: the two
metrics order the estimators alike; -1: in reverse; NaN: fewer than 3 shared
estimators, or a metric that ties them all.

`W/report/agreement.csv`: metric_a, metric_b, spearman, n (estimators both
rank), estimators (them, ';'-separated).
"""

import itertools
import math
from typing import Any, Mapping, Sequence

import numpy as np
import scipy.stats

from roar_jax import levels
from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import metric_registry
from roar_jax.benchmark.roar import protocol_registry

# Oriented so that higher is better: the retraining benchmarks' sign here,
# every no-retrain metric's from the registry (`Metric.lower_is_better`).
_SIGN = {"roar": -1.0, "kar": 1.0}


def _sign(metric: str) -> float:
  lower = metric_registry.direction(metric)
  return _SIGN.get(metric, 1.0) if lower is None else (-1.0 if lower
                                                         else 1.0)


def order() -> tuple[str, ...]:
  """The table's order: the registered metrics', then ROAR and KAR."""
  return (*metric_registry.columns(), "roar", "kar")
CSV_COLUMNS = ("metric_a", "metric_b", "spearman", "n", "estimators")


def scores(metric_rows: Sequence[Mapping[str, Any]],
           results_rows: Sequence[Mapping[str, Any]] | None = None
           ) -> dict[str, dict[str, float]]:
  """{metric: {estimator: score}}, higher = better.

  Args:
    metric_rows: metrics.csv rows (estimator, metric, value).
    results_rows: results.csv rows (estimator, mode, threshold,
      mean_accuracy, fill), for 'roar' and 'kar'.
  """
  out: dict[str, dict[str, float]] = {}
  for r in metric_rows:
    sign = _sign(r["metric"])
    out.setdefault(r["metric"], {})[r["estimator"]] = sign * float(r["value"])
  grouped: dict[tuple[str, str, str], list[float]] = {}
  for r in results_rows or ():
    acc = float(r["mean_accuracy"])
    fill = levels.fill_suffix(r.get("fill") or levels.UNNAMED_FILL)
    if math.isfinite(acc):
      grouped.setdefault((r["mode"], fill, r["estimator"]), []).append(acc)
  for (mode, fill, est), accs in grouped.items():
    name = mode if fill is None else f"{mode}_{fill}"
    out.setdefault(name, {})[est] = _SIGN[mode] * float(np.mean(accs))
  return out


def spearman(a: Mapping[str, float], b: Mapping[str, float]
             ) -> tuple[float, list[str]]:
  """Spearman's rho over the estimators both score, and those estimators."""
  shared = sorted(set(a) & set(b))
  x = np.array([a[e] for e in shared])
  y = np.array([b[e] for e in shared])
  if len(shared) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
    return math.nan, shared
  return float(scipy.stats.spearmanr(x, y).statistic), shared


def table(metric_rows, results_rows=None) -> list[dict[str, Any]]:
  """One row per pair of metrics present."""
  s = scores(metric_rows, results_rows)
  known = order()
  names = [m for m in known if m in s] + sorted(set(s) - set(known))
  rows = []
  for a, b in itertools.combinations(names, 2):
    rho, shared = spearman(s[a], s[b])
    rows.append({"metric_a": a, "metric_b": b, "spearman": rho,
                 "n": len(shared), "estimators": ";".join(shared)})
  return rows


def write(wd: workdir_lib.Workdir, metric_rows, results_rows=None
          ) -> list[dict[str, Any]]:
  """Writes W/report/agreement.csv; returns its rows."""
  rows = table(metric_rows, results_rows)
  workdir_lib.write_csv(
      wd.report("agreement.csv"),
      [{**r, "spearman": f"{r['spearman']:.4f}"} for r in rows], CSV_COLUMNS)
  return rows


@protocol_registry.register("agreement", needs=("metric_rows", "retrains"),
                            writes=("agreement.csv",))
def _protocol(context: protocol_registry.Context) -> list[dict[str, Any]]:
  """The table as a protocol: on process 0, from metrics.csv's rows (and
  results.csv's, when the grid has results)."""
  if context.metric_rows is None:
    return []
  return write(context.plan.workdir, context.metric_rows,
               context.results_rows)
