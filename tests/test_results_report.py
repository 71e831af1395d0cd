"""Results store and report: aggregation values, the CSV contract, ranking."""

import csv
import math
import os

import pytest

from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import grid, report, results


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _record(est, mode, thr, seed, acc):
  return {"estimator": est, "mode": mode, "threshold": thr, "seed": seed,
          "test_accuracy": acc, "steps": 10, "wall_time_s": 1.0,
          "config_hash": "abc"}


def test_aggregate_mean_and_sample_std():
  rows = results.aggregate(
      [_record("gradient", "roar", 0.5, s, a)
       for s, a in enumerate([0.5, 0.6, 0.7])],
      {("gradient", "roar", 0.5): 0.2})
  (row,) = rows
  assert row["num_seeds"] == 3
  assert row["mean_accuracy"] == pytest.approx(0.6)
  assert row["std_accuracy"] == pytest.approx(0.1)  # Sample std (n - 1).
  assert row["no_retrain_accuracy"] == 0.2
  # No random to pair with: no p-value.
  assert math.isnan(row["p_vs_random"])


def test_records_are_written_once_per_unit(tmp_path):
  from conftest import load_config  # pylint: disable=g-import-not-at-top
  config = load_config("toy")
  plan = grid.plan_of(config, str(tmp_path))
  u1 = grid.Unit("gradient", "roar", 0.5, 0)
  u2 = grid.Unit("gradient", "kar", 0.5, 0)
  grid.write_result(plan, u1, _record("gradient", "roar", 0.5, 0, 0.5))
  grid.write_result(plan, u1, _record("gradient", "roar", 0.5, 0, 0.55))
  grid.write_result(plan, u2, _record("gradient", "kar", 0.5, 0, 0.7))
  names = sorted(os.listdir(tmp_path / "results"))
  assert names == [u2.name + ".json", u1.name + ".json"]
  assert workdir_lib.read_json(plan.results[u1].path)["test_accuracy"] == 0.55
  with pytest.raises(ValueError, match="test_accuracy"):
    bad = _record("gradient", "kar", 0.5, 1, 0.7)
    del bad["test_accuracy"]
    grid.write_result(plan, grid.Unit("gradient", "kar", 0.5, 1), bad)


def test_unit_names_are_distinct_for_distinct_thresholds():
  names = {workdir_lib.unit_name("e", "roar", k / 16) for k in range(17)}
  assert len(names) == 17
  assert workdir_lib.unit_name("var.gradient", "kar", 0.5, 2) == (
      "var.gradient__kar__t050__seed2")


def test_report_files_csv_contract_and_ranking(tmp_path):
  records = []
  # A good estimator: low accuracy when its pixels are removed (ROAR), high
  # when only its pixels are kept (KAR); random is in between on both.
  accs = {("good", "roar"): 0.3, ("random", "roar"): 0.6,
          ("good", "kar"): 0.9, ("random", "kar"): 0.5}
  for (est, mode), acc in accs.items():
    for thr in (0.1, 0.5):
      for seed in range(2):
        records.append(_record(est, mode, thr, seed, acc + seed / 100))
  out = report.build_report(workdir_lib.Workdir(tmp_path), records, {},
                            expected_units=20, base_accuracy=0.95)
  assert out["partial"] and out["num_results"] == 16
  assert out["modes"] == ["roar", "kar"]
  folder = tmp_path / "report"
  for name in ("results.csv", "rank_stability.csv", "roar.png", "roar.pdf",
               "kar.png", "kar.pdf", "summary.md", "index.html"):
    assert (folder / name).stat().st_size > 0
    # Readable by others under the default umask (022 in CI and here).
    assert (folder / name).stat().st_mode & 0o777 == 0o666 & ~_umask()
  # The no-retrain curves are drawn in roar.png and kar.png.
  assert not (folder / "no_retrain.png").exists()
  with open(folder / "results.csv") as f:
    header = next(csv.reader(f))
  assert tuple(header) == results.REPORT_COLUMNS
  assert tuple(header[:len(results.CSV_COLUMNS)]) == results.CSV_COLUMNS
  rows = report.read_csv(str(folder / "results.csv"))
  good = [r for r in rows if r["estimator"] == "good" and r["mode"] == "roar"]
  assert [r["mean_accuracy"] for r in good] == pytest.approx([0.305, 0.305])
  assert math.isnan(good[0]["no_retrain_accuracy"])
  ranked = report.rank_estimators(rows)
  assert [e for e, _ in ranked["roar"]] == ["good", "random"]
  assert [e for e, _ in ranked["kar"]] == ["good", "random"]
  summary = (folder / "summary.md").read_text()
  assert "Partial report" in summary and "16 of 20" in summary
  assert "1. good" in summary


def test_config_hash_ignores_where_units_run():
  from conftest import load_config  # pylint: disable=g-import-not-at-top
  config = load_config("toy")
  base = results.config_hash(config)
  with config.unlocked():
    config.roar.unit = "gradient/roar/0.5/0"
    config.grid.executor = "ray"
    config.grid.ray_num_gpus = 1.0
  assert results.config_hash(config) == base
  with config.unlocked():
    config.roar.thresholds = (0.5,)
  assert results.config_hash(config) != base
