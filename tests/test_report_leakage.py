"""The report shows the leakage probes beside the verdicts they qualify."""

import numpy as np

from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import report
from roar_jax.benchmark.roar import tables


def _record(est, seed, acc):
  return {"estimator": est, "mode": "roar", "threshold": 0.9, "seed": seed,
          "test_accuracy": acc, "steps": 10, "wall_time_s": 1.0,
          "config_hash": "abc"}


def _probe(est, acc, low, high):
  return {"estimator": est, "mode": "roar", "threshold": 0.9,
          "mask_only_accuracy": acc, "chance": 0.25, "num_probe_seeds": 3,
          "ci95_low": low, "ci95_high": high,
          "accuracy_by_seed": f"{acc} {acc} {acc}"}


def test_leaking_verdict_is_warned_and_the_probe_shown(tmp_path):
  recs = [_record("random", s, a) for s, a in enumerate((0.27, 0.28, 0.26))]
  recs += [_record("gradient", s, a) for s, a in enumerate((0.73, 0.75, 0.72))]
  recs += [_record("sobel", s, a) for s, a in enumerate((0.28, 0.27, 0.27))]
  probes = [_probe("gradient", 0.64, 0.60, 0.68),
            _probe("sobel", 0.27, 0.22, 0.32),   # Within chance's reach.
            _probe("random", 0.25, 0.24, 0.26)]
  report.build_report(workdir_lib.Workdir(tmp_path), recs, {},
                      num_classes=4, leakage_rows=probes)
  summary = (tmp_path / "report" / "summary.md").read_text()
  assert ("Warning: the removal mask alone predicts the class above chance "
          "for gradient ROAR 90%.") in summary
  assert "sobel ROAR" not in summary.split("Warning")[1].split(".")[0]
  rows = {line.split(" | ")[1]: line for line in summary.splitlines()
          if line.startswith("| 0.90 |")}
  assert "64.00 [60.00, 68.00] leaks" in rows["gradient"]
  assert "27.00 [22.00, 32.00] |" in rows["sobel"]
  page = (tmp_path / "report" / "index.html").read_text()
  assert "predicts the class above chance for gradient ROAR 90%" in page


def test_leaks_needs_an_interval_above_chance():
  assert tables.leaks({"chance": 0.25, "ci95_low": 0.3})
  assert not tables.leaks({"chance": 0.25, "ci95_low": 0.2})
  assert not tables.leaks({"chance": 0.25, "ci95_low": np.nan})


def test_no_probes_no_column(tmp_path):
  recs = [_record(e, s, 0.3 + 0.01 * s) for e in ("random", "gradient")
          for s in range(2)]
  report.build_report(workdir_lib.Workdir(tmp_path), recs, {})
  summary = (tmp_path / "report" / "summary.md").read_text()
  assert "mask alone" not in summary and "Warning" not in summary
