"""Corrected statistics of the report: Holm, BH, the per-image bootstrap,
the minimum detectable difference, and the smoothness-matched verdicts.

Expected values come from hand computations, scipy's own BH, simulations with
a known difference and a Monte Carlo power estimate, not from the code path
under test.
"""

import csv
import math

import numpy as np
import pytest
from scipy import stats

from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import comparisons
from roar_jax.benchmark.roar import corrections
from roar_jax.benchmark.roar import paired_bootstrap
from roar_jax.benchmark.roar import power
from roar_jax.benchmark.roar import report
from roar_jax.benchmark.roar import results
from roar_jax.training import per_image


def test_holm_matches_hand_computation():
  p = [0.01, 0.04, 0.03, 0.005, np.nan]
  # Sorted: 0.005 (x4), 0.01 (x3), 0.03 (x2), 0.04 (x1); running maximum.
  expected = [max(0.02, 0.03), max(0.02, 0.03, 0.06, 0.04),
              max(0.02, 0.03, 0.06), 0.02, np.nan]
  np.testing.assert_allclose(corrections.holm(p), expected)


def test_holm_caps_at_one_and_keeps_order():
  out = corrections.holm([0.5, 0.6, 0.2])
  np.testing.assert_allclose(out, [1.0, 1.0, 0.6])


def test_bh_matches_scipy_and_hand_computation():
  rng = np.random.default_rng(3)
  p = np.concatenate([rng.uniform(0, 0.02, 7), rng.uniform(0, 1, 33)])
  np.testing.assert_allclose(corrections.benjamini_hochberg(p),
                             stats.false_discovery_control(p, method="bh"))
  # m = 4: q = min over j >= k of 4 p_(j) / j.
  np.testing.assert_allclose(
      corrections.benjamini_hochberg([0.01, 0.04, 0.03, 0.005]),
      [0.02, 0.04, 0.04, 0.02])


def test_corrections_leave_untested_cells_out_of_the_family():
  np.testing.assert_allclose(corrections.holm([0.02, np.nan, 0.04]),
                             [0.04, np.nan, 0.04])
  with pytest.raises(ValueError, match="must lie in"):
    corrections.holm([1.5])


def test_mdd_approaches_the_normal_closed_form():
  # Large n: (z(0.975) + z(0.8)) sd / sqrt(n) = 2.8016 sd / sqrt(n).
  z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
  assert power.paired_t_mdd(2.0, 2000) == pytest.approx(
      z * 2.0 / math.sqrt(2000), rel=2e-3)
  assert power.normal_mdd(0.01) == pytest.approx(z * 0.01)
  assert math.isnan(power.paired_t_mdd(1.0, 1))
  assert power.paired_t_mdd(0.0, 3) == 0.0


def test_mdd_of_three_seeds_has_80_percent_power_by_simulation():
  sd, n = 0.02, 3
  delta = power.paired_t_mdd(sd, n)
  rng = np.random.default_rng(0)
  diffs = rng.normal(delta, sd, size=(40000, n))
  t = diffs.mean(1) / (diffs.std(1, ddof=1) / math.sqrt(n))
  rejected = np.mean(np.abs(t) > stats.t.ppf(0.975, n - 1))
  assert rejected == pytest.approx(0.8, abs=0.01)


def _simulated_pair(rng, seeds, images, delta, seed_sd):
  """0/1 correctness of two arms whose population difference is known."""
  p = rng.beta(2, 2, size=images)
  shared = rng.normal(0, 0.03, size=seeds)[:, None]
  own = rng.normal(0, seed_sd, size=seeds)[:, None]
  control = rng.random((seeds, images)) < np.clip(p + shared, 0, 1)
  method = rng.random((seeds, images)) < np.clip(p + shared + own + delta,
                                                 0, 1)
  return method.astype(np.uint8), control.astype(np.uint8)


def test_bootstrap_interval_covers_a_known_difference_95_percent():
  rng = np.random.default_rng(1)
  # The population difference, by a large Monte Carlo draw of the model.
  p = rng.beta(2, 2, 2_000_000)
  shared = rng.normal(0, 0.03, 2_000_000)
  own = rng.normal(0, 0.01, 2_000_000)
  truth = np.mean(np.clip(p + shared + own - 0.05, 0, 1)
                  - np.clip(p + shared, 0, 1))
  covered = 0
  for k in range(200):
    a, b = _simulated_pair(rng, 5, 400, -0.05, 0.01)
    r = paired_bootstrap.difference_interval(a, b, "simulation", k,
                                             resamples=1000)
    covered += r["low"] <= truth <= r["high"]
  # Binomial sd of the coverage at 95% over 200 runs: 1.5 points.
  assert 0.91 <= covered / 200 <= 0.99


def test_bootstrap_is_reproducible_and_centred():
  rng = np.random.default_rng(2)
  a, b = _simulated_pair(rng, 3, 1000, -0.1, 0.0)
  r1 = paired_bootstrap.difference_interval(a, b, "cell")
  r2 = paired_bootstrap.difference_interval(a, b, "cell")
  assert r1 == r2
  assert r1["diff"] == pytest.approx((a.astype(float) - b).mean())
  assert r1["low"] < r1["diff"] < r1["high"] < 0
  with pytest.raises(ValueError, match="do not pair"):
    paired_bootstrap.difference_interval(a, b[:, :10], "cell")


def test_per_image_record_round_trip_in_index_order():
  correct = np.array([1, 0, 1, 1, 0, 0])
  index = np.array([4, 0, 2, -1, 1, 3])  # One padded row.
  bits = per_image.in_index_order(correct, index)
  np.testing.assert_array_equal(bits, [0, 0, 1, 0, 1])
  np.testing.assert_array_equal(per_image.decode(per_image.encode(bits), 5),
                                bits)
  with pytest.raises(ValueError, match="twice"):
    per_image.in_index_order([1, 1], [3, 3])
  with pytest.raises(ValueError, match="expected 20 images"):
    per_image.decode(per_image.encode(bits), 20)


def _record(est, mode, thr, seed, bits, fill="channel_mean"):
  bits = np.asarray(bits, np.uint8)
  return {"estimator": est, "mode": mode, "threshold": thr, "seed": seed,
          "fill": fill, "test_accuracy": float(bits.mean()),
          "num_test_examples": len(bits),
          "test_correct_bits": per_image.encode(bits), "steps": 10,
          "wall_time_s": 1.0, "config_hash": "abc"}


def _grid(rng, effects, seeds=3, images=600):
  """Records of estimators whose accuracy is base + effect (ROAR 0.9)."""
  base = rng.random(images) < 0.6
  recs = []
  for est, effect in effects.items():
    for s in range(seeds):
      flip = rng.random(images) < abs(effect)
      bits = np.where(flip, effect > 0, base) if effect else base.copy()
      noise = rng.random(images) < 0.05
      recs.append(_record(est, "roar", 0.9, s, np.where(noise, ~bits, bits)))
  return recs


def test_report_reruns_from_published_files(tmp_path):
  rng = np.random.default_rng(5)
  recs = _grid(rng, {"random": 0.0, "gradient": -0.2, "sobel": 0.0,
                     "guided_backprop": -0.01})
  report.build_report(workdir_lib.Workdir(tmp_path), recs, {})
  folder = tmp_path / "report"
  by_seed = list(csv.DictReader(open(folder / "results_by_seed.csv")))
  compared = {(r["estimator"], r["control"]): r
              for r in csv.DictReader(open(folder / "comparisons.csv"))}

  def bits(est):
    rows = sorted((r for r in by_seed if r["estimator"] == est),
                  key=lambda r: int(r["seed"]))
    return np.stack([per_image.decode(r["test_correct_bits"],
                                      int(r["num_test_examples"]))
                     for r in rows])

  p_raw = {}
  for est in ("gradient", "sobel", "guided_backprop"):
    a, b = bits(est), bits("random")
    row = compared[(est, "random")]
    p = stats.ttest_rel(a.mean(1), b.mean(1)).pvalue
    p_raw[est] = p
    assert float(row["p"]) == pytest.approx(p, rel=1e-5)
    assert float(row["mean_diff"]) == pytest.approx((a - 0.0 - b).mean(),
                                                    rel=1e-5)
    boot = paired_bootstrap.difference_interval(
        a, b, est, "roar", 0.9, "channel_mean", "random")
    assert float(row["diff_ci95_low"]) == pytest.approx(boot["low"], rel=1e-5)
    assert float(row["diff_ci95_high"]) == pytest.approx(boot["high"],
                                                         rel=1e-5)
    assert int(row["family_size"]) == 3
  # Holm over the family of three, by hand.
  order = sorted(p_raw, key=p_raw.get)
  running = 0.0
  for k, est in enumerate(order):
    running = max(running, min(1.0, (3 - k) * p_raw[est]))
    assert float(compared[(est, "random")]["p_holm"]) == pytest.approx(
        running, rel=1e-5)
  # The strong effect survives the correction; its interval excludes 0.
  assert float(compared[("gradient", "random")]["diff_ci95_high"]) < 0
  summary = (folder / "summary.md").read_text()
  assert "gradient | 3 |" in summary and "better than random (Holm" in summary
  assert "comparisons.csv" in summary and "results_by_seed.csv" in summary


def test_win_only_against_iid_random_is_marked(tmp_path):
  rng = np.random.default_rng(6)
  # sobel beats iid random but not its smoothness-matched control, which is
  # as good as sobel; gradient beats both.
  recs = _grid(rng, {"random": 0.0, "random_smooth": -0.15, "sobel": -0.15,
                     "gradient": -0.35})
  report.build_report(workdir_lib.Workdir(tmp_path), recs, {})
  folder = tmp_path / "report"
  compared = {(r["estimator"], r["control"]): r
              for r in csv.DictReader(open(folder / "comparisons.csv"))}
  assert set(compared) == {("sobel", "random"), ("sobel", "random_smooth"),
                           ("gradient", "random"),
                           ("gradient", "random_smooth"),
                           ("random_smooth", "random")}
  frame = results.aggregate_frame(recs, compared=comparisons.compare(
      results.records_frame(recs)))
  table = report.tables.results_table(
      frame, "roar", "channel_mean",
      comparisons.compare(results.records_frame(recs)))
  rows = table.set_index("estimator")
  assert rows.loc["sobel", "vs random (Holm, 5%)"].startswith("better")
  assert not rows.loc["sobel",
                      "vs smoothness-matched control"].startswith("better")
  assert rows.loc["sobel", "only vs iid random"] == "yes"
  assert rows.loc["gradient", "only vs iid random"] == ""
  assert rows.loc["gradient", "vs smoothness-matched control"].startswith(
      "better than random_smooth")


def test_matched_controls_of_different_estimators_form_one_family():
  rng = np.random.default_rng(7)
  recs = _grid(rng, {"random": 0.0, "sobel": -0.15, "gradient": -0.3,
                     "random_smooth.sobel": -0.1,
                     "random_smooth.gradient": -0.05})
  compared = comparisons.compare(results.records_frame(recs))
  smooth = compared[compared["control"].str.startswith("random_smooth.")]
  assert set(smooth["estimator"]) == {"sobel", "gradient"}
  assert (smooth["family_size"] == 2).all()
  p = smooth["p"].to_numpy()
  expected = np.minimum(1, np.maximum.accumulate(
      np.sort(p) * np.array([2, 1])))[np.argsort(np.argsort(p))]
  np.testing.assert_allclose(smooth["p_holm"], expected)
  # Against random: sobel, gradient and the two matched controls.
  assert (compared.loc[compared["control"] == "random", "family_size"]
          == 4).all()
