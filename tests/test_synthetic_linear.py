"""The ROAR paper's artificial-data result (Fig. 2), reproduced qualitatively."""

import pytest

from conftest import load_config
from roar_jax.benchmark.roar import report
from roar_jax.benchmark.roar import synthetic_linear as sl


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
  config = load_config("synthetic_linear")
  workdir = tmp_path_factory.mktemp("linear")
  return sl.run(config, str(workdir)), workdir


def test_retraining_tells_the_inverted_ranking_apart(outcome):
  out, _ = outcome
  clean = out["clean_accuracy"]
  curve = lambda ranking, kind: [out["curves"][(ranking, k)][kind]
                                 for k in range(17)]
  assert clean > 0.6  # Chance is 0.5.
  inv_retrain = curve("inverted", "retrain")
  inv_no_retrain = curve("inverted", "no_retrain")
  # With retraining: no drop until the informative features (the last 4 the
  # inverted ranking removes) start to go at 75% (k = 12 of 16).
  for k in range(13):
    assert inv_retrain[k] == pytest.approx(clean, abs=0.02), k
  assert inv_retrain[16] == pytest.approx(0.5, abs=0.02)
  # Without retraining the same wrong ranking looks informative: removing half
  # the features (all distractors) already costs accuracy.
  assert inv_no_retrain[8] < clean - 0.05
  assert inv_no_retrain[8] < inv_retrain[8] - 0.05
  # The ground truth removes the informative features first: chance by 25%.
  assert curve("ground_truth", "retrain")[4] < 0.55
  # Random lies between the two at half removed.
  rnd = curve("random", "retrain")[8]
  assert curve("ground_truth", "retrain")[8] < rnd < inv_retrain[8]


def test_report_has_every_ranking_and_fraction(outcome):
  out, workdir = outcome
  rows = report.read_csv(str(workdir / "report" / "results.csv"))
  assert len(rows) == 3 * 17
  by_key = {(r["estimator"], round(r["threshold"] * 16)): r for r in rows}
  for (ranking, k), curve in out["curves"].items():
    row = by_key[(ranking, k)]
    assert row["num_seeds"] == 5
    assert row["mean_accuracy"] == pytest.approx(curve["retrain"], abs=1e-5)
    assert row["no_retrain_accuracy"] == pytest.approx(curve["no_retrain"],
                                                       abs=1e-5)
  assert (workdir / "report" / "roar.png").exists()
  assert (workdir / "report" / "index.html").exists()
