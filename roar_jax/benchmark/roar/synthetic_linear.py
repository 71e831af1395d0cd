"""The ROAR paper's artificial-data experiment (Hooker et al. 2019, sec. 3, Fig. 2).

16 features, 4 informative (see `data.synthetic.make_synthetic_linear` for the
equation); a least-squares linear classifier; three rankings of the features:
the ground truth (informative first), a random ranking (drawn per example), and
the inverted ground truth (the worst possible estimate). For every fraction
k/16 of features removed (replaced by the training mean), the classifier is
scored without retraining (the model fit on clean data) and with retraining
(refit on the degraded training set).

The paper's finding, which the tests assert: without retraining the inverted
ranking looks informative (accuracy falls as soon as the distractor features,
which the clean model uses to cancel the shared noise, are removed); with
retraining it shows no drop until the informative features go, at 75%.

Results are written as ordinary result records (estimator = ranking, mode =
'roar', threshold = fraction removed), so the usual report reads them.
"""

import time
from typing import Any

import numpy as np
from absl import logging

from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import report as report_lib
from roar_jax.benchmark.roar import results as results_lib
from roar_jax.data import synthetic

NUM_FEATURES = 16
NUM_INFORMATIVE = 4
RANKINGS = ("ground_truth", "random", "inverted")


def _fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Least squares on +-1 targets, with a bias column."""
  xb = np.concatenate([x, np.ones((len(x), 1))], axis=1)
  w, *_ = np.linalg.lstsq(xb, 2.0 * y - 1.0, rcond=None)
  return w


def _accuracy(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
  xb = np.concatenate([x, np.ones((len(x), 1))], axis=1)
  return float(np.mean((xb @ w > 0) == (y == 1)))


def removal_order(ranking: str, num_examples: int,
                  rng: np.random.Generator) -> np.ndarray:
  """Per example, the feature indices from first removed to last, [N, 16].

  Args:
    ranking: 'ground_truth' (informative features first), 'inverted'
      (informative last) or 'random' (a fresh permutation per example).
    num_examples: N.
    rng: numpy generator for the random ranking.

  Returns:
    int array [N, 16].
  """
  truth = np.arange(NUM_FEATURES)  # The informative ones are 0..3.
  if ranking == "ground_truth":
    order = truth
  elif ranking == "inverted":
    order = truth[::-1]
  elif ranking == "random":
    return np.argsort(rng.random((num_examples, NUM_FEATURES)), axis=1)
  else:
    raise ValueError(f"ranking {ranking!r}: expected one of {RANKINGS}")
  return np.broadcast_to(order, (num_examples, NUM_FEATURES))


def degrade(x: np.ndarray, order: np.ndarray, k: int,
            fill: np.ndarray) -> np.ndarray:
  """Replaces each example's first k features of `order` by `fill`."""
  x = x.copy()
  rows = np.arange(len(x))[:, None]
  cols = order[:, :k]
  x[rows, cols] = fill[cols]
  return x


def run(config, workdir: str) -> dict[str, Any]:
  """Runs the experiment for every ranking, fraction and seed; writes the report.

  Args:
    config: `configs/synthetic_linear.py`: `linear.num_train`,
      `linear.num_test`, `linear.dataset_seed`, `roar.num_seeds`.
    workdir: results/, no_retrain/ and report/ are written here.

  Returns:
    {(ranking, k): {'retrain': mean accuracy, 'no_retrain': mean accuracy}}
    under 'curves', and 'clean_accuracy'.
  """
  lc = config.linear
  curves = {}
  clean, records = [], []
  for seed in range(config.roar.num_seeds):
    start = time.time()
    x_tr, y_tr, _, _ = synthetic.make_synthetic_linear(
        lc.num_train, seed=2 * seed, dataset_seed=lc.dataset_seed)
    x_te, y_te, _, _ = synthetic.make_synthetic_linear(
        lc.num_test, seed=2 * seed + 1, dataset_seed=lc.dataset_seed)
    fill = x_tr.mean(axis=0)
    w_clean = _fit(x_tr, y_tr)
    clean.append(_accuracy(w_clean, x_te, y_te))
    rng = np.random.default_rng(seed)
    for ranking in RANKINGS:
      order_tr = removal_order(ranking, len(x_tr), rng)
      order_te = removal_order(ranking, len(x_te), rng)
      for k in range(NUM_FEATURES + 1):
        xd_tr = degrade(x_tr, order_tr, k, fill)
        xd_te = degrade(x_te, order_te, k, fill)
        retrain = _accuracy(_fit(xd_tr, y_tr), xd_te, y_te)
        no_retrain = _accuracy(w_clean, xd_te, y_te)
        t = k / NUM_FEATURES
        records.append({
            "estimator": ranking, "mode": "roar", "threshold": t,
            "seed": seed, "test_accuracy": retrain, "steps": 1,
            "wall_time_s": time.time() - start,
            "config_hash": results_lib.config_hash(config)})
        wd = workdir_lib.as_workdir(workdir)
        workdir_lib.write_json(wd.result(workdir_lib.unit_name(
            ranking, "roar", t, seed)), records[-1])
        acc = curves.setdefault((ranking, k), {"retrain": [],
                                               "no_retrain": []})
        acc["retrain"].append(retrain)
        acc["no_retrain"].append(no_retrain)
  no_retrain = {(ranking, "roar", k / NUM_FEATURES):
                float(np.mean(acc["no_retrain"]))
                for (ranking, k), acc in curves.items()}
  curves = {key: {name: float(np.mean(v)) for name, v in acc.items()}
            for key, acc in curves.items()}
  report_lib.build_report(workdir_lib.as_workdir(workdir), records, no_retrain,
                          config=config, base_accuracy=float(np.mean(clean)),
                          num_classes=2, model="least-squares linear")
  logging.info("synthetic_linear: clean accuracy %.3f", np.mean(clean))
  return {"curves": curves, "clean_accuracy": float(np.mean(clean))}
