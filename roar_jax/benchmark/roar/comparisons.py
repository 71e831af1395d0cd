"""Every estimator against its controls: paired tests, corrections, power.

For each cell (estimator, mode, threshold, fill) and each control the
estimator is judged against (iid `random`, and the smoothness-matched control
of `estimator_names.smooth_control` when the grid has one):

- the paired t-test over seeds (seed k of every unit shares its
  initialization and data order): `p`, `mean_diff` (estimator minus control,
  accuracy fraction), `paired_seeds`;
- Holm's adjusted p and Benjamini-Hochberg's q over the family of the cell:
  every (estimator, threshold) tested against the same kind of control (iid
  random, or the smoothness-matched controls together) under one mode and
  fill (`corrections.py`); the verdict words use Holm's;
- the per-image paired bootstrap of the difference (`paired_bootstrap.py`):
  `diff_ci95_low/high`, `diff_se`, where every paired retrain kept its
  per-image record;
- the minimum detectable difference at 80% power, two-sided 5% (`power.py`):
  `mdd80` of the paired t-test over seeds, `mdd80_images` of the bootstrap.

`COLUMNS` is comparisons.csv's header, in order.
"""

import math
import warnings
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from roar_jax.benchmark.roar import corrections
from roar_jax.benchmark.roar import estimator_names
from roar_jax.benchmark.roar import paired_bootstrap
from roar_jax.benchmark.roar import power
from roar_jax.training import per_image

ALPHA = 0.05
RANDOM = estimator_names.RANDOM
CELL = ["estimator", "mode", "threshold", "fill"]
COLUMNS = (
    "estimator", "mode", "threshold", "fill", "control", "paired_seeds",
    "mean_diff", "p", "p_holm", "q_bh", "family_size", "diff_ci95_low",
    "diff_ci95_high", "diff_se", "mdd80", "mdd80_images")


def controls_of(estimator: str, estimators: Sequence[str]) -> list[str]:
  """The controls `estimator` is judged against in a grid of `estimators`:
  `random` (for every estimator but itself), then its smoothness-matched
  control when the grid has one."""
  out = [RANDOM] if estimator != RANDOM and RANDOM in estimators else []
  smooth = estimator_names.smooth_control(estimator, estimators)
  return out + ([smooth] if smooth else [])


def _t_test(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
  diff = a - b
  out = {"paired_seeds": len(diff), "mean_diff": math.nan, "p": math.nan,
         "mdd80": math.nan}
  if len(diff) == 0:
    return out
  out["mean_diff"] = float(diff.mean())
  if len(diff) >= 2:
    sd = float(diff.std(ddof=1))
    out["mdd80"] = power.paired_t_mdd(sd, len(diff))
    if np.ptp(diff) > 0:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out["p"] = float(stats.ttest_rel(a, b).pvalue)
  return out


def _bits(rows: pd.DataFrame) -> np.ndarray | None:
  """[seeds, images] per-image correctness, or None if a record lacks it."""
  if "test_correct_bits" not in rows:
    return None
  texts, counts = rows["test_correct_bits"], rows["num_test_examples"]
  if texts.isna().any() or counts.isna().any() or counts.nunique() != 1:
    return None
  return np.stack([per_image.decode(t, int(n))
                   for t, n in zip(texts, counts)])


def _bootstrap(est: pd.DataFrame, ctl: pd.DataFrame, key) -> dict[str, float]:
  a, b = _bits(est), _bits(ctl)
  if a is None or b is None or a.shape != b.shape:
    return {"diff_ci95_low": math.nan, "diff_ci95_high": math.nan,
            "diff_se": math.nan, "mdd80_images": math.nan}
  r = paired_bootstrap.difference_interval(a, b, *key)
  return {"diff_ci95_low": r["low"], "diff_ci95_high": r["high"],
          "diff_se": r["se"], "mdd80_images": power.normal_mdd(r["se"])}


def _compare(cell: pd.DataFrame, control: pd.DataFrame, key) -> dict:
  """One estimator cell against one control cell (records by seed)."""
  est = cell.set_index("seed")
  ctl = control.set_index("seed")
  seeds = sorted(set(est.index) & set(ctl.index))
  est, ctl = est.loc[seeds], ctl.loc[seeds]
  out = _t_test(est["test_accuracy"].to_numpy(float),
                ctl["test_accuracy"].to_numpy(float))
  out.update(_bootstrap(est, ctl, key))
  return out


def compare(frame: pd.DataFrame) -> pd.DataFrame:
  """Every (cell, control) comparison of a grid's records.

  Args:
    frame: one row per record (`results.records_frame`): CELL columns,
      seed, test_accuracy, and (when kept) num_test_examples and
      test_correct_bits.

  Returns:
    One row per comparison, COLUMNS, sorted by control, mode, fill,
    threshold, estimator.
  """
  names = sorted(set(frame["estimator"]))
  cells = dict(tuple(frame.groupby(CELL, sort=True)))
  rows = []
  for (est, mode, thr, fill), cell in cells.items():
    for control in controls_of(est, names):
      ctl = cells.get((control, mode, thr, fill))
      if ctl is None:
        continue
      key = (est, mode, thr, fill, control)
      rows.append(dict(zip(CELL + ["control"], key),
                       **_compare(cell, ctl, key)))
  out = pd.DataFrame(rows, columns=[c for c in COLUMNS
                                    if c not in ("p_holm", "q_bh",
                                                 "family_size")])
  return _corrected(out)[list(COLUMNS)]


def family_of(control: str) -> str:
  """The kind of control a test belongs to: 'random', or 'smooth' for every
  smoothness-matched control (each estimator has its own, and together they
  are one family)."""
  return RANDOM if control == RANDOM else "smooth"


def _corrected(out: pd.DataFrame) -> pd.DataFrame:
  """Adds p_holm, q_bh and family_size within each family: one kind of
  control (`family_of`), one mode and one fill."""
  out = out.assign(p_holm=np.nan, q_bh=np.nan, family_size=0,
                   _family=out["control"].map(family_of))
  for _, family in out.groupby(["_family", "mode", "fill"], sort=False):
    p = family["p"].to_numpy(float)
    out.loc[family.index, "p_holm"] = corrections.holm(p)
    out.loc[family.index, "q_bh"] = corrections.benjamini_hochberg(p)
    out.loc[family.index, "family_size"] = int(np.sum(~np.isnan(p)))
  out = out.drop(columns="_family")
  out["family_size"] = out["family_size"].astype(int)
  out["paired_seeds"] = out["paired_seeds"].astype(int)
  return out.sort_values(["control", "mode", "fill", "threshold",
                          "estimator"], kind="stable", ignore_index=True)


def verdict(*, mode: str, control: str, num_seeds: int, paired_seeds: int,
            p: float, p_holm: float, mean_diff: float, mdd80: float) -> str:
  """The words of one comparison, from Holm's adjusted p at 5%.

  In ROAR a better estimator leaves a LOWER accuracy (its removed pixels
  mattered); in KAR a HIGHER one (its kept pixels suffice). "Not
  distinguishable" states the smallest difference the seeds could have found
  (80% power), so that it reads "no difference larger than D".

  Args:
    mode: 'roar' or 'kar'.
    control: the control's name.
    num_seeds: the estimator cell's retrained seeds.
    paired_seeds: the seeds it shares with the control.
    p: the raw paired-t p-value (NaN: no test).
    p_holm: the Holm-adjusted p.
    mean_diff: estimator minus control, accuracy fraction.
    mdd80: the minimum detectable difference (fraction).
  """
  if num_seeds == 0:
    return "not retrained yet"
  if num_seeds == 1:
    return "single seed: no test"
  if paired_seeds < 2:
    return f"no test: {control} has < 2 of these seeds"
  if math.isnan(p):
    return "no test: the seeds' differences do not vary"
  if p_holm >= ALPHA:
    detectable = ("" if math.isnan(mdd80) else
                  f"; none larger than {100 * mdd80:.1f} points detectable")
    return f"not distinguishable (Holm {holm_clause(p_holm)}{detectable})"
  lower = mean_diff < 0
  better = lower if mode == "roar" else not lower
  return (f"{'better' if better else 'worse'} than {control} "
          f"(Holm {holm_clause(p_holm)})")


def holm_clause(p: float) -> str:
  return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def row_verdict(row, mode: str) -> str:
  """`verdict` of a results row against random (`results.aggregate_frame`)."""
  if row["estimator"] == RANDOM:
    return "control"
  return verdict(mode=mode, control=RANDOM, num_seeds=int(row["num_seeds"]),
                 paired_seeds=int(row["paired_seeds"]), p=row["p_vs_random"],
                 p_holm=row["p_holm_vs_random"],
                 mean_diff=row["mean_diff_vs_random"],
                 mdd80=row["mdd80_vs_random"])
