"""Result records of finished retrains, and their aggregation.

Every finished (estimator, mode, threshold, seed) unit writes one record to
`W/results/<unit>.json` (`grid.write_result`; the path is the workdir's), once,
atomically, with its fingerprint: an interrupted grid never holds half a
result, a rerun never counts one twice, and a record of another config is
never counted (`pipeline.report`).

`aggregate_frame` turns the records into one row per (estimator, mode,
threshold, fill) with the contract columns of `results.csv` (CSV_COLUMNS)
and the statistics of `statistics.py` (STAT_COLUMNS).
"""

import hashlib
import json
from typing import Any, Iterable, Mapping

import pandas as pd

from roar_jax import levels
from roar_jax.benchmark.roar import comparisons
from roar_jax.benchmark.roar import statistics

REQUIRED_KEYS = ("estimator", "mode", "threshold", "seed", "test_accuracy",
                 "steps", "wall_time_s", "config_hash")

# The contract columns of results.csv, in this order.
CSV_COLUMNS = ("estimator", "mode", "threshold", "num_seeds", "mean_accuracy",
               "std_accuracy", "no_retrain_accuracy")
# Statistics after them: a 95% Student-t interval of the mean over seeds and
# the paired t-test's p-value against `random` (same mode and threshold).
STAT_COLUMNS = ("ci95_low", "ci95_high", "p_vs_random")
# Then the fill of the degraded images (`config.roar.fill`, a grid axis).
# Last, the comparison with `random` corrected for multiple testing (Holm's
# p, Benjamini-Hochberg's q over the cells of one mode and fill), the
# per-image bootstrap interval of the difference to random, and the smallest
# difference the seeds could detect (comparisons.py; every control's in
# comparisons.csv).
VS_RANDOM_COLUMNS = ("p_holm_vs_random", "q_bh_vs_random",
                     "diff_ci95_low_vs_random", "diff_ci95_high_vs_random",
                     "mdd80_vs_random")
REPORT_COLUMNS = CSV_COLUMNS + STAT_COLUMNS + ("fill",) + VS_RANDOM_COLUMNS
# results_by_seed.csv: one row per retrain, with its per-image record
# (`training/per_image.py`), so that every test reruns from the published
# files.
SEED_COLUMNS = ("estimator", "mode", "threshold", "fill", "seed",
                "test_accuracy", "num_test_examples", "test_correct_bits")

KEYS = ["estimator", "mode", "threshold", "fill"]
# Thresholds are fractions stored as floats; rounded, equal fractions of
# different records group together.
_THRESHOLD_DECIMALS = 4


def config_hash(config) -> str:
  """A short hash of the config fields that change what a unit computes.

  `roar.unit` (which unit to run), `roar.batch_units` (how many train
  together) and the `grid` section (where it runs) do not change results, so
  they are left out: units run on different machines of one grid share a hash.
  """
  d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  d.pop("grid", None)
  d["roar"] = {k: v for k, v in d.get("roar", {}).items()
               if k not in ("unit", "batch_units")}
  blob = json.dumps(d, sort_keys=True, default=str).encode()
  return hashlib.sha256(blob).hexdigest()[:12]


def records_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
  """One row per record (SEED_COLUMNS), sorted by estimator, mode,
  threshold, fill and seed.

  A record without a fill (written before the fill was a grid axis) counts
  as UNNAMED_FILL's; `pipeline.report` gives every record its unit's fill. A
  record without a per-image record (written before they were kept) has
  None there: its cell gets no per-image interval.
  """
  rows = [{"estimator": str(r["estimator"]), "mode": str(r["mode"]),
           "threshold": round(float(r["threshold"]), _THRESHOLD_DECIMALS),
           "fill": str(r.get("fill", levels.UNNAMED_FILL)),
           "seed": int(r["seed"]), "test_accuracy": float(r["test_accuracy"]),
           "num_test_examples": r.get("num_test_examples"),
           "test_correct_bits": r.get("test_correct_bits")}
          for r in records]
  frame = pd.DataFrame(rows, columns=list(SEED_COLUMNS))
  frame = frame.astype({"estimator": str, "mode": str, "threshold": float,
                        "fill": str, "seed": int, "test_accuracy": float,
                        "num_test_examples": "Int64", "test_correct_bits": object})
  # Sorted, so that every statistic sums in the same order whatever the
  # order the records were read in.
  return frame.sort_values(KEYS + ["seed"], kind="stable", ignore_index=True)


def _no_retrain_series(no_retrain) -> pd.Series:
  """Keys (estimator, mode, threshold[, fill]) -> accuracy as a Series."""
  def key(k):
    e, m, t, *fill = k
    return (e, m, round(float(t), _THRESHOLD_DECIMALS),
            fill[0] if fill else levels.UNNAMED_FILL)
  index = pd.MultiIndex.from_tuples([key(k) for k in (no_retrain or {})],
                                    names=KEYS)
  return pd.Series([float(a) for a in (no_retrain or {}).values()],
                   index=index, name="no_retrain_accuracy", dtype=float)


def _vs_random(compared: pd.DataFrame) -> pd.DataFrame:
  """The comparisons with `random`, indexed by KEYS, as results.csv names
  them."""
  sub = compared[compared["control"] == comparisons.RANDOM]
  sub = sub.set_index(KEYS)
  return pd.DataFrame({
      "p_vs_random": sub["p"], "paired_seeds": sub["paired_seeds"],
      "mean_diff_vs_random": sub["mean_diff"],
      "p_holm_vs_random": sub["p_holm"], "q_bh_vs_random": sub["q_bh"],
      "diff_ci95_low_vs_random": sub["diff_ci95_low"],
      "diff_ci95_high_vs_random": sub["diff_ci95_high"],
      "mdd80_vs_random": sub["mdd80"]}, index=sub.index)


def aggregate_frame(records: Iterable[Mapping[str, Any]],
                    no_retrain: Mapping[tuple, float] | None = None,
                    compared: pd.DataFrame | None = None) -> pd.DataFrame:
  """One row per (estimator, mode, threshold, fill), sorted by them.

  Columns: REPORT_COLUMNS, then `paired_seeds` and `mean_diff_vs_random`
  (the mean over paired seeds of accuracy minus random's accuracy) used for
  the verdicts. A key with a no-retrain score but no retrain yet has
  num_seeds 0 and NaN statistics.

  Args:
    records: result records.
    no_retrain: (estimator, mode, threshold, fill) -> accuracy of the base
      model on that degraded test split, without retraining (a key without
      the fill: UNNAMED_FILL's).
    compared: `comparisons.compare` of the same records (computed when not
      given).
  """
  frame = records_frame(records)
  if compared is None:
    compared = comparisons.compare(frame)
  stats = statistics.seed_statistics(frame, KEYS)
  out = stats.join(_vs_random(compared), how="left").join(
      _no_retrain_series(no_retrain), how="outer")
  out = out.reset_index().sort_values(KEYS, kind="stable", ignore_index=True)
  out["num_seeds"] = out["num_seeds"].fillna(0).astype(int)
  out["paired_seeds"] = out["paired_seeds"].fillna(0).astype(int)
  return out[list(REPORT_COLUMNS) + ["paired_seeds", "mean_diff_vs_random"]]


def aggregate(records: Iterable[Mapping[str, Any]],
              no_retrain: Mapping[tuple, float] | None = None
              ) -> list[dict[str, Any]]:
  """`aggregate_frame` as a list of dicts (plain Python numbers).

  Rows hold the REPORT_COLUMNS keys, sorted by estimator, mode, threshold,
  fill;
  std_accuracy is the sample std over seeds (NaN for a single seed: one seed
  has no spread to report, not a spread of 0).
  """
  return rows_of(aggregate_frame(records, no_retrain))


def rows_of(frame: pd.DataFrame) -> list[dict[str, Any]]:
  """The REPORT_COLUMNS of an aggregated frame as dicts of Python values."""
  return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
          for r in frame[list(REPORT_COLUMNS)].to_dict("records")]
