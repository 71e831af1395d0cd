"""Result records of finished retrains, and their aggregation.

Every finished (estimator, mode, threshold, seed) unit writes one record to
`W/results/<unit>.json` (`grid.write_result`; the path is the workdir's), once,
atomically, with its fingerprint: an interrupted grid never holds half a
result, a rerun never counts one twice, and a record of another config is
never counted (`pipeline.report`).
"""

import collections
import hashlib
import json
import math
from typing import Any, Iterable, Mapping

REQUIRED_KEYS = ("estimator", "mode", "threshold", "seed", "test_accuracy",
                 "steps", "wall_time_s", "config_hash")

CSV_COLUMNS = ("estimator", "mode", "threshold", "num_seeds", "mean_accuracy",
               "std_accuracy", "no_retrain_accuracy")


def config_hash(config) -> str:
  """A short hash of the config fields that change what a unit computes.

  `roar.unit` (which unit to run) and the `grid` section (where it runs) do
  not change results, so they are left out: units run on different machines
  of one grid share a hash.
  """
  d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  d.pop("grid", None)
  d["roar"] = {k: v for k, v in d.get("roar", {}).items() if k != "unit"}
  blob = json.dumps(d, sort_keys=True, default=str).encode()
  return hashlib.sha256(blob).hexdigest()[:12]


def _mean_std(values: list[float]) -> tuple[float, float]:
  mean = sum(values) / len(values)
  # Sample standard deviation over seeds (0 for a single seed).
  var = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)
         if len(values) > 1 else 0.0)
  return mean, math.sqrt(var)


def aggregate(records: Iterable[Mapping[str, Any]],
              no_retrain: Mapping[tuple[str, str, float], float] | None = None
              ) -> list[dict[str, Any]]:
  """One row per (estimator, mode, threshold): mean and std over seeds.

  Args:
    records: result records.
    no_retrain: (estimator, mode, threshold) -> accuracy of the base model on
      that degraded test split, without retraining.

  Returns:
    Rows with the CSV_COLUMNS keys, sorted by estimator, mode, threshold.
  """
  groups = collections.defaultdict(list)
  for r in records:
    groups[(r["estimator"], r["mode"], round(float(r["threshold"]), 4))].append(
        float(r["test_accuracy"]))
  no_retrain = {(e, m, round(float(t), 4)): a
                for (e, m, t), a in (no_retrain or {}).items()}
  rows = []
  for key in sorted(set(groups) | set(no_retrain)):
    accs = groups.get(key, [])
    mean, std = _mean_std(accs) if accs else (float("nan"), float("nan"))
    rows.append({"estimator": key[0], "mode": key[1], "threshold": key[2],
                 "num_seeds": len(accs), "mean_accuracy": mean,
                 "std_accuracy": std,
                 "no_retrain_accuracy": no_retrain.get(key, float("nan"))})
  return rows
