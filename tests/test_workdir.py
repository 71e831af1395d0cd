"""The workdir: one atomic writer, file modes, corrupt files named, the lock,
and the provenance checks that keep results of different configs apart.

These run without training: artifacts are laid down by hand with the
provenance a given config plans for them.
"""

import errno
import json
import os
import socket
import subprocess
import sys

import pytest

import finished_runs
from roar_jax import config as config_pkg
from roar_jax import provenance
from roar_jax import workdir as workdir_lib
from roar_jax import workdir_lock
from roar_jax.benchmark.roar import grid
from roar_jax.benchmark.roar import pipeline


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


_config = finished_runs.toy_grid


def test_writes_are_atomic_with_readable_modes(tmp_path):
  path = tmp_path / "a" / "b.json"
  workdir_lib.write_json(path, {"b": 1, "a": [1, 2]})
  workdir_lib.write_json(path, {"b": 2})  # Replaced whole.
  assert workdir_lib.read_json(path) == {"b": 2}
  assert os.listdir(tmp_path / "a") == ["b.json"]  # No temporary left.
  assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()
  # Equal objects give equal bytes (sorted keys): reports are reproducible.
  workdir_lib.write_json(tmp_path / "c.json", {"a": 1, "b": 2})
  workdir_lib.write_json(tmp_path / "d.json", {"b": 2, "a": 1})
  assert (tmp_path / "c.json").read_bytes() == (tmp_path / "d.json").read_bytes()


def test_corrupt_json_is_named(tmp_path):
  path = tmp_path / "results" / "x.json"
  path.parent.mkdir()
  path.write_text('{"test_accuracy": 0.5')  # Truncated.
  with pytest.raises(workdir_lib.WorkdirError, match=r"x\.json is corrupt"):
    workdir_lib.read_json(path)
  assert workdir_lib.read_json(tmp_path / "absent.json", missing_ok=True) is None


def test_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch):
  real_fdopen = os.fdopen

  class _Full:
    def __init__(self, fd):
      self.f = real_fdopen(fd, "wb")

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      self.f.close()

    def write(self, data):
      raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(workdir_lib.os, "fdopen", lambda fd, mode: _Full(fd))
  target = tmp_path / "report" / "summary.md"
  with pytest.raises(workdir_lib.WorkdirError) as e:
    workdir_lib.write_text(target, "x")
  assert str(e.value) == f"cannot write {target}: no space left on the device"
  assert os.listdir(target.parent) == []  # The temporary file is removed.


def test_read_only_workdir_is_one_line():
  # sysfs refuses new folders even to root.
  out = subprocess.run(
      [sys.executable, "-m", "roar_jax.main", "--config=configs/toy.py",
       "--workdir=/sys/roar_workdir", "--mode=train"],
      capture_output=True, text=True, timeout=120,
      cwd=os.path.dirname(os.path.dirname(__file__)))
  assert out.returncode == 1
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: cannot write /sys/roar_workdir/lock.json: ")
  assert "Traceback" not in out.stderr


def test_lock_refuses_a_second_run_and_takes_over_a_dead_ones(tmp_path):
  wd = workdir_lib.Workdir(tmp_path)
  first = workdir_lock.Lock(wd)
  first.acquire()
  owner = json.loads((tmp_path / "lock.json").read_text())
  assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
  with pytest.raises(workdir_lib.WorkdirError,
                     match=f"in use by process {os.getpid()}"):
    workdir_lock.Lock(wd).acquire()
  first.release()
  assert not (tmp_path / "lock.json").exists()
  # A lock left by a process that died (kill -9) is taken over.
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  (tmp_path / "lock.json").write_text(json.dumps(
      {"host": socket.gethostname(), "pid": dead.pid, "since": "then"}))
  with workdir_lock.Lock(wd):
    assert json.loads((tmp_path / "lock.json").read_text())["pid"] == (
        os.getpid())


def test_second_process_stops_within_seconds_in_one_line(tmp_path):
  with workdir_lock.Lock(workdir_lib.Workdir(tmp_path)):
    out = subprocess.run(
        [sys.executable, "-m", "roar_jax.main", "--config=configs/toy.py",
         f"--workdir={tmp_path}", "--mode=roar"],
        capture_output=True, text=True, timeout=60,
        cwd=os.path.dirname(os.path.dirname(__file__)))
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1].startswith(
      f"error: {tmp_path} is in use by process {os.getpid()}")
  assert not (tmp_path / "base").exists()  # Nothing was done.


@pytest.mark.parametrize("thresholds,percent", [
    ((0.5, 0.504), 50), ((0.5, 0.5), 50),
    # 0.125 removes 13% of the pixels (half up), so it is 0.13's percent.
    ((0.125, 0.13), 13)])
def test_thresholds_sharing_a_percent_are_refused(thresholds, percent):
  config = _config(thresholds=thresholds)
  first, second = (str(t).replace(".", r"\.") for t in thresholds)
  with pytest.raises(config_pkg.ConfigError,
                     match=rf"config.roar.thresholds: {first} and {second} "
                     rf"are the same threshold in whole percents "
                     rf"\({percent}%\)"):
    config_pkg.validate(config, "roar")
  # 0.12 and 0.125 are two percents, 12 and 13.
  config_pkg.validate(_config(thresholds=(0.12, 0.125)), "roar")


def test_one_rounding_rule_for_removal_names_and_fingerprints(tmp_path):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from roar_jax import levels as levels_lib  # pylint: disable=g-import-not-at-top
  # Removal: 0.125 removes the levels 0..12, 13 of 100; 0.145 removes 15.
  removed = levels_lib.removal_mask(np.arange(100), threshold=0.125,
                                    mode="roar")
  assert removed.sum() == 13
  assert levels_lib.removal_mask(np.arange(100), threshold=0.145,
                                 mode="roar").sum() == 15
  # The name says the percent removed.
  assert workdir_lib.unit_name("gradient", "roar", 0.125) == (
      "gradient__roar__t013")
  assert workdir_lib.unit_name("gradient", "roar", 0.145, 0) == (
      "gradient__roar__t015__seed0")
  # A run at 0.125 leaves results that a rerun at 0.12 neither finds under
  # its names nor accepts under its fingerprints.
  done = finished_runs.lay_down(_config(thresholds=(0.125,)), str(tmp_path))
  rerun = grid.plan_of(_config(thresholds=(0.12,)), str(tmp_path))
  for unit_125, unit_12 in zip(sorted(done.results), sorted(rerun.results)):
    assert done.results[unit_125].path != rerun.results[unit_12].path
    assert (done.datasets[unit_125.key].record["fields"]["threshold_percent"],
            rerun.datasets[unit_12.key].record["fields"][
                "threshold_percent"]) == (13, 12)
    assert not grid.is_done(rerun, unit_12)
  # ... and 0.13, the same 13 levels, finds 0.125's result.
  same = grid.plan_of(_config(thresholds=(0.13,)), str(tmp_path))
  assert all(grid.is_done(same, u) for u in same.results)


def test_unchanged_config_reuses_every_artifact(tmp_path):
  config = _config()
  plan = finished_runs.lay_down(config, str(tmp_path))
  assert provenance.check(grid.plan_of(config, str(tmp_path)).all()) == []
  assert all(grid.is_done(plan, u) for u in plan.units)


@pytest.mark.parametrize("field,value,affected", [
    ("train.learning_rate", 0.01,
     "1 base model, 1 rank store, 3 retrains, 3 results"),
    ("roar.fill_value", (128.0, 128.0, 128.0), "3 retrains, 3 results"),
    ("explain.granularity", "value",
     "3 rank stores, 3 retrains, 3 results"),
    ("seed", 3, "1 base model, 3 rank stores, 3 retrains, 3 results"),
])
def test_changed_config_stops_naming_fields_and_artifacts(
    tmp_path, field, value, affected):
  finished_runs.lay_down(_config(), str(tmp_path))
  config = _config()
  section, _, name = field.rpartition(".")
  with config.unlocked():
    (config[section] if section else config)[name] = value
  with pytest.raises(workdir_lib.WorkdirError) as e:
    pipeline.open_run(config, str(tmp_path), mode="roar")
  message = str(e.value)
  assert "\n" not in message
  assert f"changed {field}" in message and f"(affects {affected})" in message
  assert "--recompute" in message
  assert not (tmp_path / "stale").exists()  # Nothing moved, nothing run.


def test_corrupt_result_is_named_and_recompute_moves_it(tmp_path):
  config = _config()
  plan = finished_runs.lay_down(config, str(tmp_path))
  (unit,) = [u for u in plan.units if u.estimator == "oracle"]
  path = plan.results[unit].path
  with open(path, "w") as f:
    f.write('{"test_accuracy": ')  # Truncated by a full disk, say.
  with pytest.raises(workdir_lib.WorkdirError,
                     match=f"^{path} cannot be read: rerun with --recompute"):
    pipeline.open_run(config, str(tmp_path), mode="roar")
  plan = pipeline.open_run(config, str(tmp_path), mode="roar", recompute=True)
  assert not grid.is_done(plan, unit)
  assert sum(grid.is_done(plan, u) for u in plan.units) == 2


def test_recompute_moves_stale_artifacts_aside(tmp_path):
  old = _config()
  pipeline.open_run(old, str(tmp_path), mode="roar")  # Writes config.json.
  finished_runs.lay_down(old, str(tmp_path))
  old_config = (tmp_path / "config.json").read_bytes()
  (tmp_path / "report").mkdir()
  (tmp_path / "report" / "results.csv").write_text("old report\n")
  config = _config()
  with config.unlocked():
    config.train.learning_rate = 0.01
  plan = pipeline.open_run(config, str(tmp_path), mode="roar", recompute=True)
  (stale,) = os.listdir(tmp_path / "stale")
  moved = tmp_path / "stale" / stale
  # The old report and config.json go with the artifacts they describe.
  assert (moved / "report" / "results.csv").read_text() == "old report\n"
  assert (moved / "config.json").read_bytes() == old_config
  assert not (tmp_path / "report").exists()
  assert sorted(os.listdir(moved / "results")) == sorted(
      u.name + ".json" for u in plan.units)
  assert (moved / "base" / "provenance.json").exists()
  # The model-free rankings did not change and stay.
  assert (tmp_path / "ranks" / "random" / "provenance.json").exists()
  assert os.listdir(tmp_path / "results") == []
  assert json.loads((tmp_path / "config.json").read_text())["config"][
      "train"]["learning_rate"] == 0.01


def test_extending_the_grid_keeps_finished_units(tmp_path):
  finished_runs.lay_down(_config(), str(tmp_path), accuracy=0.25)
  config = _config(thresholds=(0.5, 0.9), num_seeds=2, modes=("roar", "kar"))
  plan = pipeline.open_run(config, str(tmp_path), mode="roar")
  done = {u for u in plan.units if grid.is_done(plan, u)}
  assert done == {grid.Unit(e, "roar", 0.5, 0)
                  for e in config.explain.estimators}
  assert len(plan.units) == 3 * 2 * 2 * 2


def test_a_second_fill_keeps_the_first_fills_units(tmp_path):
  """The fill is a grid axis: adding one runs its units beside the others,
  under names that carry it; the channel mean's units keep their names."""
  finished_runs.lay_down(_config(), str(tmp_path), accuracy=0.25)
  config = _config()
  with config.unlocked():
    config.roar.fill = ("channel_mean", "noisy_linear")
  plan = pipeline.open_run(config, str(tmp_path), mode="roar")
  done = {u for u in plan.units if grid.is_done(plan, u)}
  assert done == {grid.Unit(e, "roar", 0.5, 0, "channel_mean")
                  for e in config.explain.estimators}
  new = sorted(u.name for u in plan.units if u not in done)
  assert new == sorted(f"{e}__roar__t050__noisy_linear__seed0"
                       for e in config.explain.estimators)
  # Datasets of both fills, from one rank store per estimator.
  assert len(plan.datasets) == 6 and len(plan.removals()) == 3


def test_report_counts_only_results_of_the_current_config(tmp_path):
  config = _config()
  plan = finished_runs.lay_down(config, str(tmp_path), accuracy=0.25)
  # A result left by another config under a current unit's name.
  (unit,) = [u for u in plan.units if u.estimator == "random"]
  record = workdir_lib.read_json(plan.results[unit].path)
  workdir_lib.write_json(plan.results[unit].path,
                         {**record, "fingerprint": "another"})
  out = pipeline.report(config, str(tmp_path))
  assert out["num_results"] == 2 and out["partial"]
  assert {r["estimator"] for r in out["rows"]} == {"gradient", "oracle"}


def test_config_json_records_the_config_and_version(tmp_path):
  config = _config()
  pipeline.open_run(config, str(tmp_path), mode="train")
  stored = json.loads((tmp_path / "config.json").read_text())
  import roar_jax  # pylint: disable=g-import-not-at-top
  assert stored["version"] == roar_jax.__version__
  assert stored["mode"] == "train"
  assert stored["config"]["roar"]["thresholds"] == [0.5]


def test_load_refuses_a_base_model_whose_training_did_not_finish(
    tmp_path, caplog):
  import roar_jax  # pylint: disable=g-import-not-at-top
  from roar_jax import runs  # pylint: disable=g-import-not-at-top
  config = _config()
  with config.unlocked():
    config.train.num_steps = 200
  wd = workdir_lib.Workdir(str(tmp_path))
  workdir_lib.write_config(wd, config, "train")
  # Killed at step 100: a checkpoint, no metrics.json (written last).
  (tmp_path / "base" / "checkpoints" / "100").mkdir(parents=True)
  message = (f"{wd.base}: the base model's training did not finish (step 100 "
             f"of 200); rerun --mode=train with --workdir={wd} to finish it")
  with pytest.raises(workdir_lib.WorkdirError) as error:
    roar_jax.load(str(tmp_path))
  assert str(error.value).startswith(message)
  # Metrics of a run with fewer steps (num_steps raised since) are no
  # finished run of this config either.
  workdir_lib.write_json(tmp_path / "base" / "metrics.json", {"steps": 150})
  with pytest.raises(workdir_lib.WorkdirError, match=r"\(step 150 of 200\)"):
    roar_jax.load(str(tmp_path))
  # Asked for, the model as it is loads with a warning naming the step.
  with caplog.at_level("WARNING"):
    runs.check_base_finished(runs.load_config(wd), wd, allow_unfinished=True)
  assert "(step 150 of 200)" in caplog.text
  workdir_lib.write_json(tmp_path / "base" / "metrics.json", {"steps": 200})
  runs.check_base_finished(runs.load_config(wd), wd)  # Finished: no error.


def _forge(path, **values):
  record = workdir_lib.read_json(path)
  record.update(values)
  workdir_lib.write_json(path, record)


def test_a_forged_result_record_stops_the_report(tmp_path):
  config = _config()
  plan = finished_runs.lay_down(config, str(tmp_path), accuracy=0.255)
  unit = sorted(plan.results)[0]
  assert {r["test_accuracy"] for r in pipeline.verified_records(plan)} == {
      0.255}
  result = plan.results[unit].path
  _forge(result, test_accuracy=0.99)
  with pytest.raises(workdir_lib.WorkdirError) as error:
    pipeline.verified_records(plan)
  assert str(error.value).startswith(
      f"{result}: its values do not match its record_checksum (edited after "
      "the run wrote it?); delete it")
  # Forged with a recomputed checksum: the unit's own metrics.json says
  # otherwise.
  workdir_lib.write_json(
      workdir_lib.join(plan.units[unit].path, "metrics.json"),
      {"test_accuracy": 0.255, "steps": 1})
  record = workdir_lib.read_json(result)
  _forge(result, record_checksum=grid.record_checksum(record))
  with pytest.raises(workdir_lib.WorkdirError) as error:
    pipeline.verified_records(plan)
  assert str(error.value).startswith(
      f"{result}: test_accuracy=0.99 differs from the unit's "
      f"{plan.units[unit].path}/metrics.json (0.255)")
  # A record moved to another unit's name is named too.
  _forge(result, test_accuracy=0.255, threshold=0.9)
  record = workdir_lib.read_json(result)
  _forge(result, record_checksum=grid.record_checksum(record))
  with pytest.raises(workdir_lib.WorkdirError,
                     match=r"threshold=0.9 is not its unit's 0.5"):
    pipeline.verified_records(plan)
