"""W/report/ built whole, then swapped in (report_folder.py): an interrupted
build leaves the old report byte for byte, a changed config is refused, and
one unit never replaces the grid's report.

These run without training: artifacts are laid down by hand with the
provenance the config plans for them.
"""

import os
import socket
import subprocess
import sys
import types

import pytest

import finished_runs
from roar_jax import report_folder
from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import pipeline
from roar_jax.benchmark.roar import report as report_lib
from roar_jax.benchmark.sanity import report as sanity_report


def _config(**roar):
  config = finished_runs.toy_grid(**roar)
  with config.unlocked():
    config.metrics.with_roar = False
  return config


def _files(folder):
  return {n: (folder / n).read_bytes() for n in sorted(os.listdir(folder))}


def _mean_accuracies(root):
  rows = report_lib.read_csv(os.path.join(root, "report", "results.csv"))
  return {r["mean_accuracy"] for r in rows}


@pytest.fixture
def reported(tmp_path):
  """A workdir with a report of accuracy 0.25 and another stage's figure."""
  config = _config()
  finished_runs.lay_down(config, str(tmp_path), accuracy=0.25)
  (tmp_path / "report").mkdir()
  (tmp_path / "report" / "saliency.png").write_bytes(b"explain's figure")
  (tmp_path / "report" / "sanity.csv").write_text("sanity's table\n")
  pipeline.report(config, str(tmp_path), num_classes=4)
  assert _mean_accuracies(tmp_path) == {0.25}
  return config, tmp_path


def test_report_carries_other_stages_files_and_leaves_no_staging(reported):
  _, root = reported
  files = _files(root / "report")
  assert files["saliency.png"] == b"explain's figure"
  assert files["sanity.csv"] == b"sanity's table\n"
  assert {"results.csv", "index.html", "summary.md", "leakage.csv",
          "roar.png"} <= set(files)
  assert report_folder.MANIFEST not in files
  assert sorted(n for n in os.listdir(root) if n.startswith("report")) == [
      "report"]


def test_interrupted_report_leaves_the_old_one_byte_identical(
    reported, monkeypatch):
  config, root = reported
  before = _files(root / "report")
  finished_runs.lay_down(config, str(root), accuracy=0.75)  # New results to report.

  def crash(*args, **kwargs):
    raise KeyboardInterrupt  # As SIGTERM / Ctrl-C midway through the build.

  # results.csv is written, the figures are not.
  monkeypatch.setattr(report_lib.figures, "write_mode_figures", crash)
  with pytest.raises(KeyboardInterrupt):
    pipeline.report(config, str(root), num_classes=4)
  assert _files(root / "report") == before
  assert sorted(n for n in os.listdir(root) if n.startswith("report")) == [
      "report"]
  monkeypatch.undo()
  pipeline.report(config, str(root), num_classes=4)
  assert _mean_accuracies(root) == {0.75}


def test_killed_build_is_cleared_and_a_finished_swap_completed(reported):
  config, root = reported
  before = _files(root / "report")
  # kill -9 midway through a build: a staging folder without a manifest,
  # of a process that no longer runs.
  dead = root / f"report.tmp-{socket.gethostname()}-999999999"
  dead.mkdir()
  (dead / "results.csv").write_text("half written\n")
  # A build still running beside it (--mode=report holds no lock).
  other = subprocess.Popen([sys.executable, "-c",
                            "import time; time.sleep(60)"])
  live = root / f"report.tmp-{socket.gethostname()}-{other.pid}"
  live.mkdir()
  try:
    report_folder.recover(workdir_lib.Workdir(str(root)))
    assert live.exists()
  finally:
    other.kill()
    other.wait()
  assert not dead.exists() and _files(root / "report") == before
  live.rmdir()
  # kill -9 inside the swap, after the old report was renamed away: the
  # manifest marks the staging folder finished, the next run publishes it.
  done = root / f"report.tmp-{socket.gethostname()}-999999998"
  done.mkdir()
  (done / "results.csv").write_text("new\n")
  workdir_lib.write_json(done / report_folder.MANIFEST, ["results.csv"])
  os.rename(root / "report", root / "report.old-x-999999998")
  report_folder.recover(workdir_lib.Workdir(str(root)))
  assert _files(root / "report") == {"results.csv": b"new\n"}
  assert sorted(n for n in os.listdir(root) if n.startswith("report")) == [
      "report"]
  del config


def test_report_after_a_config_change_is_refused_naming_the_field(reported):
  config, root = reported
  before = _files(root / "report")
  with config.unlocked():
    config.train.learning_rate = 0.01
  with pytest.raises(workdir_lib.WorkdirError) as error:
    pipeline.report(config, str(root), num_classes=4)
  message = str(error.value)
  assert "\n" not in message and "changed train.learning_rate" in message
  assert _files(root / "report") == before
  assert not (root / "stale").exists()


def test_one_unit_never_replaces_the_grids_report(reported, monkeypatch):
  config, root = reported
  before = _files(root / "report")
  with config.unlocked():
    config.roar.unit = "gradient/roar/0.5/0"
  with pytest.raises(workdir_lib.WorkdirError, match="^roar.unit=gradient/"):
    pipeline.report(config, str(root), num_classes=4)
  # `--mode=roar` of the unit (finished already): its stages stand in.
  source = types.SimpleNamespace(info=types.SimpleNamespace(num_classes=4))
  monkeypatch.setattr(pipeline.sources, "get_source", lambda _: source)
  monkeypatch.setattr(pipeline, "train_base",
                      lambda *_: {"test_accuracy": 0.9})
  monkeypatch.setattr(pipeline.explain, "run", lambda *_, **__: None)
  monkeypatch.setattr(pipeline.grid, "channel_mean", lambda *_: None)
  monkeypatch.setattr(pipeline.grid, "evaluate_no_retrain", lambda *_: None)
  out = pipeline.run(config, str(root),
                     run_unit=lambda *_: pytest.fail("the unit is done"))
  assert out["report"] is None and out["units"] == 0
  assert _files(root / "report") == before


def test_sanity_files_are_swapped_in_beside_the_grids_report(reported):
  _, root = reported
  before = _files(root / "report")
  wd = workdir_lib.Workdir(str(root))
  with report_folder.staged(wd, report_folder.owns_sanity) as staged:
    sanity_report.build_report(staged, [])
  after = _files(root / "report")
  # The grid's files are carried over unchanged; sanity's are replaced.
  assert {n: b for n, b in after.items() if not n.startswith("sanity")} == {
      n: b for n, b in before.items() if not n.startswith("sanity")}
  assert after["sanity.csv"] != before["sanity.csv"]
  assert after["sanity.md"].startswith(b"#")
