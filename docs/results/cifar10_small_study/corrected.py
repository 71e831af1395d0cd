"""Re-reports the committed CIFAR-10 study with corrected statistics.

The study (configs/cifar10_small_study.py, 3 seeds) was published before results
kept per-seed accuracies and per-image records, so its per-image bootstrap
cannot be rebuilt. What its results.csv does determine:

- Holm's p and Benjamini-Hochberg's q over each family the report now tests
  (every (estimator, threshold) cell of one mode and fill against random);
- the minimum detectable difference of each cell: with n = 3 paired seeds,
  the paired t statistic is t = mean_diff / (s / sqrt(3)), and the two-sided
  p gives |t| = t.ppf(1 - p / 2, 2); so s = |mean_diff| sqrt(3) / |t|.

Run from the repository root:

  python docs/results/cifar10_small_study/corrected.py

It writes corrected.csv beside this file and prints the cells that survive.
"""

import math
import os

import numpy as np
import pandas as pd
from scipy import stats

from roar_jax.benchmark.roar import corrections
from roar_jax.benchmark.roar import power

HERE = os.path.dirname(os.path.abspath(__file__))


def corrected(frame: pd.DataFrame) -> pd.DataFrame:
  """Per non-random row: diff to random, p, Holm p, BH q, sd and MDD."""
  random = frame[frame["estimator"] == "random"].set_index(
      ["mode", "threshold", "fill"])["mean_accuracy"]
  rows = frame[frame["estimator"] != "random"].copy()
  keys = list(zip(rows["mode"], rows["threshold"], rows["fill"]))
  rows["mean_diff"] = rows["mean_accuracy"].to_numpy() - random.loc[keys].to_numpy()
  n = rows["num_seeds"].to_numpy()
  t = stats.t.ppf(1 - rows["p_vs_random"].to_numpy() / 2, n - 1)
  rows["sd_diff"] = np.abs(rows["mean_diff"]) * np.sqrt(n) / t
  rows["mdd80"] = [power.paired_t_mdd(s, int(k))
                   for s, k in zip(rows["sd_diff"], n)]
  rows["p_holm"] = np.nan
  rows["q_bh"] = np.nan
  for _, family in rows.groupby(["mode", "fill"]):
    rows.loc[family.index, "p_holm"] = corrections.holm(family["p_vs_random"])
    rows.loc[family.index, "q_bh"] = corrections.benjamini_hochberg(
        family["p_vs_random"])
  rows["p_holm_all_80"] = corrections.holm(rows["p_vs_random"])
  rows["q_bh_all_80"] = corrections.benjamini_hochberg(rows["p_vs_random"])
  return rows[["estimator", "mode", "threshold", "fill", "num_seeds",
               "mean_diff", "p_vs_random", "p_holm", "q_bh", "p_holm_all_80",
               "q_bh_all_80", "sd_diff", "mdd80"]]


def main():
  frame = pd.read_csv(os.path.join(HERE, "results.csv"))
  out = corrected(frame)
  out.to_csv(os.path.join(HERE, "corrected.csv"), index=False,
             float_format="%.6g", lineterminator="\n")
  print(f"{len(out)} tests in {out.groupby(['mode', 'fill']).ngroups} "
        "families (mode, fill)")
  for name in ("p_vs_random", "p_holm", "q_bh", "p_holm_all_80",
               "q_bh_all_80"):
    print(f"  {name}: min {out[name].min():.4f}, below 0.05: "
          f"{int((out[name] < 0.05).sum())}")
  print(f"  MDD at 80% power (points): median {100 * out['mdd80'].median():.1f},"
        f" range {100 * out['mdd80'].min():.1f}-{100 * out['mdd80'].max():.1f}")
  sd = out["sd_diff"].median()
  for seeds in (3, 5, 10, 20):
    print(f"  with {seeds} seeds at the median sd of the paired differences "
          f"({100 * sd:.2f} points): MDD "
          f"{100 * power.paired_t_mdd(sd, seeds):.2f} points")
  smallest = out.nsmallest(5, "p_vs_random")
  print(smallest.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
  main()
