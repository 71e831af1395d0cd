"""The progress arithmetic (`progress_eta`) on a fake clock, and the lines
that `--mode=roar` and the leakage probes log with it."""

import logging

import ml_collections
import pytest

from roar_jax import progress_eta
from roar_jax.benchmark.roar import leakage
from roar_jax.benchmark.roar import pipeline
from roar_jax.benchmark.roar import ray_executor


class FakeClock:
  """Seconds that move only when told."""

  def __init__(self, now: float = 1000.0):
    self.now = now

  def __call__(self) -> float:
    return self.now


class Lines:
  """Collects `log(fmt, *args)` calls as formatted lines."""

  def __init__(self):
    self.lines = []

  def __call__(self, fmt, *args):
    self.lines.append(fmt % args)


def test_format_duration_picks_the_unit():
  assert progress_eta.format_duration(0) == "0 s"
  assert progress_eta.format_duration(45.4) == "45 s"
  assert progress_eta.format_duration(89) == "89 s"
  assert progress_eta.format_duration(90) == "2 min"
  assert progress_eta.format_duration(21 * 60 + 10) == "21 min"
  assert progress_eta.format_duration(89 * 60) == "89 min"
  assert progress_eta.format_duration(2.5 * 3600) == "2.5 h"
  assert progress_eta.format_duration(-3) == "0 s"


def test_eta_is_the_mean_unit_time_of_this_process_times_units_left():
  clock = FakeClock()
  # The mode began 10 min before the units; 5 of 30 were done earlier.
  eta = progress_eta.Eta(30, done=5, clock=clock, started=clock.now - 600)
  assert eta.seconds_left() is None
  assert eta.describe("unit") == "5/30 units done, ETA after the first unit"
  clock.now += 120  # First unit: 120 s.
  eta.update()
  assert eta.seconds_left() == 120 * 24
  clock.now += 180  # Second unit: 180 s; mean 150 s.
  eta.update()
  assert eta.done == 7 and eta.finished_here == 2
  assert eta.seconds_left() == 150 * 23
  assert eta.elapsed() == 600 + 300
  assert eta.describe("unit") == (
      "7/30 units done, 15 min elapsed, about 58 min left")


def test_eta_of_a_group_counts_each_unit_once():
  clock = FakeClock()
  eta = progress_eta.Eta(8, clock=clock)
  clock.now += 400  # A batched group of 4 units ends together.
  eta.update(4)
  assert eta.seconds_left() == 100 * 4
  clock.now += 400
  eta.update(4)
  assert eta.seconds_left() == 0
  assert eta.describe("unit") == (
      "8/8 units done, 13 min elapsed, about 0 s left")


def test_bar_without_a_terminal_logs_at_most_every_interval():
  clock, lines = FakeClock(), Lines()
  with progress_eta.Bar(100, "metrics", noun="image", interval=30,
                        clock=clock, log=lines, disable=True) as bar:
    assert bar.logs
    clock.now += 10
    bar.update(10, "gradient on test images 0-10")
    assert not lines.lines  # 10 s < 30 s.
    clock.now += 20
    bar.update(10, "gradient on test images 10-20")
    assert lines.lines == [
        "metrics: gradient on test images 10-20, 20/100 images done, 30 s "
        "elapsed, about 2 min left"]  # 30 s / 20 images x 80 = 120 s.
    clock.now += 5
    bar.update(70)
    assert len(lines.lines) == 1  # 5 s after the last line.
    clock.now += 5
    bar.update(10)  # Complete: logged whatever the interval.
    assert bar.n == 100
    assert lines.lines[-1] == (
        "metrics: 100/100 images done, 40 s elapsed, about 0 s left")


def test_bar_on_a_terminal_logs_nothing():
  clock, lines = FakeClock(), Lines()
  bar = progress_eta.Bar(3, "probes", clock=clock, log=lines, disable=False)
  assert not bar.logs
  for _ in range(3):
    clock.now += 100
    bar.update(1, "x")
  bar.close()
  assert bar.n == 3 and not lines.lines


def test_timed_logs_the_start_and_the_duration():
  clock, lines = FakeClock(), Lines()
  with progress_eta.timed("writing rank store for gradient (3 shards)",
                          clock=clock, log=lines):
    clock.now += 41.25
  assert lines.lines == [
      "writing rank store for gradient (3 shards)...",
      "writing rank store for gradient (3 shards): done in 41.2 s"]


def _roar_lines(caplog):
  return [r.getMessage() for r in caplog.records
          if r.getMessage().startswith("roar: ")]


@pytest.mark.parametrize("batch_units", [1, 2])
def test_roar_logs_the_grid_after_every_unit(caplog, monkeypatch,
                                             batch_units):
  clock = FakeClock()
  config = ml_collections.ConfigDict({"roar": {"batch_units": batch_units}})
  ran = []

  def one(config, plan, unit, source, fill):
    del config, plan, source, fill
    clock.now += 60
    ran.append([unit])

  def many(config, plan, units, source, fill):
    del config, plan, source, fill
    clock.now += 60 * len(units)
    ran.append(list(units))

  monkeypatch.setattr(pipeline.grid, "run_units", many)
  # 4 units to run of 6; the mode began 5 min before the first unit.
  eta = progress_eta.Eta(6, done=2, clock=clock, started=clock.now - 300)
  with caplog.at_level(logging.INFO):
    pipeline.run_local_units(config, None, ["a", "b", "c", "d"], None, None,
                             run_unit=one, eta=eta)
  assert [u for group in ran for u in group] == ["a", "b", "c", "d"]
  assert all(len(g) == batch_units for g in ran)
  # 60 s a unit whatever the grouping.
  minutes = {1: ["6 min", "7 min", "8 min", "9 min"],
             2: ["7 min", "9 min"]}[batch_units]
  lefts = {1: ["3 min", "2 min", "60 s", "0 s"],
           2: ["2 min", "0 s"]}[batch_units]
  dones = {1: [3, 4, 5, 6], 2: [4, 6]}[batch_units]
  assert _roar_lines(caplog) == [
      "roar: 2/6 units done, ETA after the first unit"] + [
          f"roar: {d}/6 units done, {m} elapsed, about {left} left"
          for d, m, left in zip(dones, minutes, lefts)]


def test_probe_lines_count_the_probes_to_train(caplog):
  clock = FakeClock()
  eta = progress_eta.Eta(3, clock=clock)
  with caplog.at_level(logging.INFO):
    leakage._log_probe_start(eta, "gradient", "roar", 0.9)  # pylint: disable=protected-access
    clock.now += 100
    eta.update()
    leakage._log_probe_start(eta, "random", "kar", 0.5)  # pylint: disable=protected-access
  assert [r.getMessage() for r in caplog.records] == [
      "leakage: probe 1 of 3 (gradient roar 0.90), ETA after the first probe",
      "leakage: probe 2 of 3 (random kar 0.50), 2 min elapsed, about 3 min "
      "left"]


class _FakeRay:
  """ray.wait/get over task values; a value may be the task's error."""

  class exceptions:  # pylint: disable=invalid-name
    RayError = RuntimeError

  def __init__(self, clock, values):
    self.clock, self.values = clock, values

  def wait(self, pending, num_returns):
    self.clock.now += 30  # Each task ends 30 s after the last.
    return pending[:num_returns], pending[num_returns:]

  def get(self, ref):
    if isinstance(self.values[ref], Exception):
      raise self.values[ref]
    return self.values[ref]


class Unit:
  """What `_collect` reads of a unit: its name."""

  def __init__(self, name):
    self.name = name


def test_ray_units_log_the_grid_as_they_finish(caplog, monkeypatch):
  clock = FakeClock()
  ray = _FakeRay(clock, {"a": {"test_accuracy": 0.5},
                         "b": RuntimeError("lost"),
                         "c": {"test_accuracy": 0.7}})
  refs = {name: Unit(name) for name in ("a", "b", "c")}
  monkeypatch.setattr(ray_executor.grid, "is_done", lambda plan, unit: True)
  eta = progress_eta.Eta(4, done=1, clock=clock)
  with caplog.at_level(logging.INFO):
    records, failures = ray_executor._collect(ray, refs, None, eta)  # pylint: disable=protected-access
  assert sorted(u.name for u in records) == ["a", "c"]
  assert list(failures) == ["b"]
  # a: 30 s for 1 unit; b failed (not done); c: 90 s for 2 units.
  assert _roar_lines(caplog) == [
      "roar: 2/4 units done, 30 s elapsed, about 60 s left",
      "roar: 2/4 units done, 60 s elapsed, about 2 min left (1 failed)",
      "roar: 3/4 units done, 2 min elapsed, about 45 s left (1 failed)"]
