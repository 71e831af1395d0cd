"""Statistics of the ROAR/KAR results over seeds.

- A 95% confidence interval of every mean over seeds: Student t with n - 1
  degrees of freedom, mean ± t(0.975, n - 1) · s / sqrt(n); none for one seed.
- Every estimator against its controls: `comparisons.py` (paired tests,
  corrections for multiple testing, the per-image bootstrap, power).
- The stability of the estimators' ordering across seeds: each seed orders
  the estimators by their accuracy averaged over the thresholds; Kendall's W
  (coefficient of concordance, with the tie correction) and the mean
  pairwise Spearman correlation of those orderings measure how much the
  seeds agree (1: every seed gives the same order).
"""

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95


def t_interval(mean, std, n, confidence: float = CONFIDENCE):
  """The Student-t interval of a mean: (low, high), NaN where n < 2.

  Args:
    mean: sample means (arrays or scalars).
    std: sample standard deviations (ddof = 1).
    n: sample sizes.
    confidence: the interval's coverage.
  """
  mean, std, n = (np.asarray(a, dtype=float) for a in (mean, std, n))
  ok = n >= 2
  df = np.where(ok, n - 1, 1.0)
  half = stats.t.ppf(0.5 + confidence / 2, df) * std / np.sqrt(
      np.where(ok, n, 1.0))
  half = np.where(ok, half, np.nan)
  return mean - half, mean + half


def seed_statistics(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
  """Per key: num_seeds, mean_accuracy, std_accuracy, ci95_low, ci95_high.

  Args:
    frame: one row per record (`results.records_frame`).
    keys: the columns that identify a unit apart from its seed.
  """
  out = frame.groupby(keys, sort=True)["test_accuracy"].agg(
      num_seeds="count", mean_accuracy="mean", std_accuracy="std")
  low, high = t_interval(out["mean_accuracy"], out["std_accuracy"],
                         out["num_seeds"])
  return out.assign(ci95_low=low, ci95_high=high)


def format_p(p: float) -> str:
  """A p-value in a table cell: 3 decimals, '< 0.001', '–' for none."""
  if np.isnan(p):
    return "–"
  return "< 0.001" if p < 0.001 else f"{p:.3f}"


def p_clause(p: float) -> str:
  return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _kendall_w(ranks: pd.DataFrame) -> float:
  """Kendall's W of a (raters x items) table of ranks, tie-corrected."""
  m, n = ranks.shape
  total = ranks.sum(axis=0)
  s = float(((total - total.mean()) ** 2).sum())
  ties = sum(float(((c ** 3) - c).sum())
             for c in (row.value_counts() for _, row in ranks.iterrows()))
  denom = m ** 2 * (n ** 3 - n) - m * ties
  return 12 * s / denom if denom > 0 else np.nan


def _mean_pairwise_spearman(scores: pd.DataFrame) -> float:
  """Mean Spearman rho over pairs of seeds (rows) of their item scores."""
  rho = scores.T.corr(method="spearman").to_numpy()
  upper = rho[np.triu_indices_from(rho, k=1)]
  upper = upper[~np.isnan(upper)]
  return float(upper.mean()) if upper.size else np.nan


def seed_scores(frame: pd.DataFrame, mode: str,
                fill: str | None = None) -> pd.DataFrame:
  """(seeds x estimators): mean accuracy over the thresholds of `mode` (and
  `fill`, when given).

  Only (seed, threshold) cells that every estimator has count, so each
  seed scores every estimator on the same thresholds.
  """
  sub = frame[frame["mode"] == mode]
  if fill is not None:
    sub = sub[sub["fill"] == fill]
  wide = sub.pivot_table(index=["seed", "threshold"], columns="estimator",
                         values="test_accuracy", aggfunc="mean").dropna()
  return wide.groupby(level="seed").mean()


def rank_stability(frame: pd.DataFrame) -> pd.DataFrame:
  """Per mode and fill: how consistently the seeds order the estimators.

  Columns: mode, fill, seeds, estimators, kendall_w, mean_spearman, best (the
  estimator ranked first by the mean over seeds: lowest accuracy in ROAR,
  highest in KAR), best_in_seeds (in how many seeds it is first).

  Args:
    frame: one row per record (`results.records_frame`).
  """
  rows = []
  # ROAR first, then KAR (then any other mode, alphabetically).
  pairs = sorted(set(zip(frame["mode"], frame["fill"])),
                 key=lambda p: (p[0] != "roar", p[0] != "kar", p))
  for mode, fill in pairs:
    scores = seed_scores(frame, mode, fill)
    m, n = scores.shape
    row = {"mode": mode, "fill": fill, "seeds": m, "estimators": n,
           "kendall_w": np.nan, "mean_spearman": np.nan, "best": "",
           "best_in_seeds": 0}
    if m and n:
      ascending = mode == "roar"
      # Rank 1 = best in that seed; ties share the mean rank.
      ranks = scores.rank(axis=1, ascending=ascending)
      best = scores.mean(axis=0).sort_values(ascending=ascending,
                                             kind="stable").index[0]
      row.update(best=best, best_in_seeds=int((ranks[best] == 1).sum()))
      if m >= 2 and n >= 2:
        row.update(kendall_w=_kendall_w(ranks),
                   mean_spearman=_mean_pairwise_spearman(scores))
    rows.append(row)
  return pd.DataFrame(rows, columns=["mode", "fill", "seeds", "estimators",
                                     "kendall_w", "mean_spearman", "best",
                                     "best_in_seeds"])
