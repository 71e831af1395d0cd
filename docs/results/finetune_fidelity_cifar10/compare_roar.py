"""Spearman's rho between each no-retrain score and ROAR at 90% on CIFAR-10.

  python docs/results/finetune_fidelity_cifar10/compare_roar.py

Reads this folder's metrics.csv (the base model's deletion and the
fine-tuned model's, same base model as the study) and the study's ROAR
accuracies (../cifar10_study/results.csv, both fills), orients every score
so that lower is better, and prints rho over the 5 estimators with its exact
two-sided permutation p-value (all 120 orderings).
"""

import itertools
import os

import numpy as np
import pandas as pd
from scipy import stats

HERE = os.path.dirname(os.path.abspath(__file__))
LOWER_IS_BETTER = {"deletion_auc": True, "ff_deletion_auc": True,
                   "road_morf_auc": True, "insertion_auc": False,
                   "road_lerf_auc": False}


def main():
  metrics = pd.read_csv(os.path.join(HERE, "metrics.csv"))
  roar = pd.read_csv(os.path.join(HERE, "..", "cifar10_study",
                                  "results.csv"))
  for fill, rows in roar.groupby("fill"):
    accuracy = rows.set_index("estimator")["mean_accuracy"]
    names = sorted(accuracy.index)
    perms = [stats.spearmanr(accuracy[names].to_numpy(), p).statistic
             for p in itertools.permutations(range(len(names)))]
    for metric, lower in LOWER_IS_BETTER.items():
      score = metrics[metrics.metric == metric].set_index("estimator")
      value = score.loc[names, "value"].to_numpy()
      rho = stats.spearmanr(accuracy[names].to_numpy(),
                            value if lower else -value).statistic
      p = np.mean(np.abs(perms) >= abs(rho) - 1e-12)
      print(f"ROAR 90% ({fill}) vs {metric}: rho {rho:+.2f}, "
            f"permutation p {p:.3f}")


if __name__ == "__main__":
  main()
