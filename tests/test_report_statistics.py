"""The report's statistics against hand computations.

Expected values come from closed forms written here (the t distribution with
1 and 2 degrees of freedom has elementary quantiles and tail areas), not from
the code path under test.
"""

import math

import numpy as np
import pytest

from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import comparisons, report, results, statistics

# Two-sided 95% quantiles of Student's t: 1 df (Cauchy: tan(0.475 pi)) and
# 2 df (sqrt(2) * q / sqrt(1 - q^2) with q = 2 * 0.975 - 1).
T975_DF1 = math.tan(0.475 * math.pi)
T975_DF2 = math.sqrt(2) * 0.95 / math.sqrt(1 - 0.95 ** 2)


def _p_two_sided(t: float, df: int) -> float:
  """P(|T| > |t|) for Student's t with 1 or 2 degrees of freedom."""
  if df == 1:
    return 1 - 2 * math.atan(abs(t)) / math.pi
  assert df == 2
  return 1 - abs(t) / math.sqrt(t * t + 2)


def _record(est, mode, thr, seed, acc):
  return {"estimator": est, "mode": mode, "threshold": thr, "seed": seed,
          "test_accuracy": acc, "steps": 10, "wall_time_s": 1.0,
          "config_hash": "abc"}


# A 2-seed grid: seed k of every unit shares initialization and data order,
# so `gradient` and `random` pair up by seed.
GRID_2 = {("gradient", "roar", 0.5): [0.40, 0.46],
          ("random", "roar", 0.5): [0.61, 0.64],
          ("gradient", "kar", 0.5): [0.80, 0.78],
          ("random", "kar", 0.5): [0.55, 0.60]}


def _records(grid, order=None):
  recs = [_record(e, m, t, s, a) for (e, m, t), accs in grid.items()
          for s, a in enumerate(accs)]
  if order is not None:
    recs = [recs[i] for i in order]
  return recs


def _hand(accs, control):
  """Mean, 95% t-interval and paired p of `accs` against `control`."""
  a = np.asarray(accs)
  n = len(a)
  q = {2: T975_DF1, 3: T975_DF2}[n]
  mean = a.sum() / n
  s = math.sqrt(((a - mean) ** 2).sum() / (n - 1))
  half = q * s / math.sqrt(n)
  d = a - np.asarray(control)
  t = d.mean() / (math.sqrt(((d - d.mean()) ** 2).sum() / (n - 1))
                  / math.sqrt(n))
  return mean, s, mean - half, mean + half, _p_two_sided(t, n - 1)


def test_two_seed_grid_ci_and_paired_p_match_hand_computation(tmp_path):
  rng = np.random.default_rng(0)
  recs = _records(GRID_2, order=rng.permutation(8))  # Any order pairs by seed.
  report.build_report(workdir_lib.Workdir(tmp_path), recs, {},
                      base_accuracy=0.9, num_classes=4)
  rows = {(r["estimator"], r["mode"]): r for r in report.read_csv(
      str(tmp_path / "report" / "results.csv"))}
  for mode in ("roar", "kar"):
    accs = GRID_2[("gradient", mode, 0.5)]
    control = GRID_2[("random", mode, 0.5)]
    mean, std, low, high, p = _hand(accs, control)
    row = rows[("gradient", mode)]
    assert row["num_seeds"] == 2
    # results.csv holds 6 significant digits.
    assert row["mean_accuracy"] == pytest.approx(mean, rel=1e-5)
    assert row["std_accuracy"] == pytest.approx(std, rel=1e-5)
    assert row["ci95_low"] == pytest.approx(low, rel=1e-5)
    assert row["ci95_high"] == pytest.approx(high, rel=1e-5)
    assert row["p_vs_random"] == pytest.approx(p, rel=1e-5)
    # The control has an interval but no p-value against itself.
    assert math.isnan(rows[("random", mode)]["p_vs_random"])
    r_mean, _, r_low, r_high, _ = _hand(control, control[::-1])
    assert rows[("random", mode)]["ci95_low"] == pytest.approx(r_low, rel=1e-5)
    assert rows[("random", mode)]["ci95_high"] == pytest.approx(r_high,
                                                                rel=1e-5)
    assert r_low < r_mean < r_high
  # ROAR: differences (-0.21, -0.18), standard error 0.03 / 2: t = -13 at
  # 1 df, p = 1 - 2 atan(13) / pi.
  assert rows[("gradient", "roar")]["p_vs_random"] == pytest.approx(
      1 - 2 * math.atan(13) / math.pi, rel=1e-5)
  summary = (tmp_path / "report" / "summary.md").read_text()
  assert "single seed" not in summary and "± 0" not in summary
  # 2 seeds: |t| = 13 at 1 df gives p = 0.049 in ROAR: better than random.
  # Each family (mode, fill, control) holds one test: Holm's p is the raw p.
  assert "better than random (Holm p = 0.049)" in summary
  # KAR: the differences (0.25, 0.18) give |t| = 6.14, p = 0.103.
  assert "not distinguishable (Holm p = 0.103; none larger than" in summary


def test_three_seeds_pair_by_seed_not_by_position():
  est = [0.30, 0.50, 0.41]
  ctrl = [0.36, 0.56, 0.46]  # Higher in every seed: a clear paired effect.
  recs = ([_record("gradient", "roar", 0.2, s, a)
           for s, a in zip((2, 0, 1), est)] +
          [_record("random", "roar", 0.2, s, a)
           for s, a in zip((1, 2, 0), [ctrl[2], ctrl[0], ctrl[1]])])
  (row,) = [r for r in results.aggregate(recs) if r["estimator"] ==
            "gradient"]
  # Seed 2 -> 0.30 vs 0.36, seed 0 -> 0.50 vs 0.56, seed 1 -> 0.41 vs 0.46.
  mean, std, low, high, p = _hand(est, ctrl)
  assert row["mean_accuracy"] == pytest.approx(mean)
  assert row["std_accuracy"] == pytest.approx(std)
  assert (row["ci95_low"], row["ci95_high"]) == pytest.approx((low, high))
  assert row["p_vs_random"] == pytest.approx(p)
  assert p < 0.01
  # Paired in the order the records came, the same numbers show no effect.
  assert _hand(est, [ctrl[2], ctrl[0], ctrl[1]])[4] > 0.5


def test_fewer_than_two_paired_seeds_give_no_p_value():
  recs = [_record("gradient", "roar", 0.5, s, a)
          for s, a in ((0, 0.3), (1, 0.35))]
  recs += [_record("random", "roar", 0.5, s, a)
           for s, a in ((1, 0.6), (2, 0.62))]  # Only seed 1 pairs.
  frame = results.aggregate_frame(recs)
  row = frame[frame["estimator"] == "gradient"].iloc[0]
  assert row["paired_seeds"] == 1 and math.isnan(row["p_vs_random"])
  assert "no test" in comparisons.row_verdict(row, "roar")


def test_one_seed_grid_says_single_seed(tmp_path):
  recs = [_record("gradient", "roar", 0.5, 0, 0.429),
          _record("random", "roar", 0.5, 0, 0.461)]
  report.build_report(workdir_lib.Workdir(tmp_path), recs,
                      {("gradient", "roar", 0.5): 0.2})
  rows = report.read_csv(str(tmp_path / "report" / "results.csv"))
  for r in rows:
    assert r["num_seeds"] == 1
    for k in ("std_accuracy", "ci95_low", "ci95_high", "p_vs_random"):
      assert math.isnan(r[k]), k
  summary = (tmp_path / "report" / "summary.md").read_text()
  assert "42.90 (single seed: no interval)" in summary
  assert "46.10 (single seed: no interval)" in summary
  assert "single seed: no test" in summary
  assert "± 0" not in summary and "±" not in summary
  page = (tmp_path / "report" / "index.html").read_text()
  assert "single seed: no interval" in page


@pytest.mark.parametrize("mode,shift,expected", [
    ("roar", -0.2, "better than random"),
    ("roar", +0.2, "worse than random"),
    ("kar", +0.2, "better than random"),
    ("kar", -0.2, "worse than random"),
    ("roar", 0.0, "not distinguishable"),
])
def test_verdict_direction_per_mode(mode, shift, expected):
  ctrl = [0.50, 0.55, 0.60]
  noise = [0.01, -0.02, 0.015]
  recs = [_record("random", mode, 0.5, s, a) for s, a in enumerate(ctrl)]
  recs += [_record("gradient", mode, 0.5, s, a + shift + e)
           for s, (a, e) in enumerate(zip(ctrl, noise))]
  frame = results.aggregate_frame(recs)
  row = frame[frame["estimator"] == "gradient"].iloc[0]
  assert comparisons.row_verdict(row, mode).startswith(expected)


def test_rank_stability_kendall_w_and_spearman():
  # Seeds order three estimators (ROAR: lower = better) as a<b<c, a<b<c and
  # b<a<c. Rank sums 4, 5, 9 (mean 6): S = 14, W = 12 S / (m^2 (n^3 - n))
  # = 168 / 216; Spearman per pair of seeds: 1, 0.5, 0.5.
  accs = {0: {"a": 0.2, "b": 0.3, "c": 0.6},
          1: {"a": 0.1, "b": 0.4, "c": 0.5},
          2: {"a": 0.35, "b": 0.3, "c": 0.7}}
  recs = [_record(e, "roar", t, s, acc + t / 10)
          for s, by in accs.items() for e, acc in by.items()
          for t in (0.1, 0.5)]
  (row,) = statistics.rank_stability(results.records_frame(recs)).to_dict(
      "records")
  assert row["seeds"] == 3 and row["estimators"] == 3
  assert row["kendall_w"] == pytest.approx(168 / 216)
  assert row["mean_spearman"] == pytest.approx(2 / 3)
  # (m W - 1) / (m - 1) is the mean pairwise Spearman without ties.
  assert row["mean_spearman"] == pytest.approx((3 * row["kendall_w"] - 1) / 2)
  assert row["best"] == "a" and row["best_in_seeds"] == 2


def test_rank_stability_of_one_seed_is_undefined():
  recs = [_record(e, "kar", 0.5, 0, a) for e, a in (("a", 0.9), ("b", 0.5))]
  (row,) = statistics.rank_stability(results.records_frame(recs)).to_dict(
      "records")
  assert row["seeds"] == 1 and math.isnan(row["kendall_w"])
  assert row["best"] == "a" and row["best_in_seeds"] == 1
