"""ROAR/KAR end to end on the toy data: the oracle beats random, interrupted
grids resume with every result exactly once, written == on-the-fly datasets."""

import copy
import os
import pathlib
import re

import numpy as np
import pytest

from conftest import load_config
from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import grid, report, results
from roar_jax.benchmark.roar import pipeline as roar
from roar_jax.data import pipeline


def load_results(workdir):
  """Every result record stored in the workdir."""
  return [r for _, r in workdir_lib.iter_json(
      workdir_lib.Workdir(workdir).sub("results"))]


def _config():
  config = load_config("toy")
  with config.unlocked():
    config.explain.estimators = ("oracle", "random", "gradient")
    config.roar.thresholds = (0.5,)
    config.roar.num_seeds = 1
    config.train.num_steps = 200
    config.train.checkpoint_every = 100
    config.metrics.num_images = 50  # The metrics stage runs in the grid.
    config.metrics.leakage_seeds = 1  # The probe's seeds: test_metrics_leakage.
  return config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A grid interrupted inside its second unit, then rerun to the end."""
  workdir = str(tmp_path_factory.mktemp("roar"))
  config = _config()
  calls = []

  def interrupting_unit(config, plan, unit, source, fill):
    calls.append(unit)

    def crash(step, metrics):
      del metrics
      if len(calls) == 2 and step == 150:
        raise KeyboardInterrupt  # As Ctrl-C inside the unit's training.

    return grid.run_unit(config, plan, unit, source, fill,
                         step_callback=crash)

  with pytest.raises(KeyboardInterrupt):
    roar.run(config, workdir, run_unit=interrupting_unit)
  assert len(load_results(workdir)) == 1
  interrupted = calls[1]
  resumed = []
  out = roar.run(config, workdir, run_unit=lambda *a: resumed.append(a[2]) or
                 grid.run_unit(*a))
  return config, workdir, out, interrupted, resumed


def test_oracle_beats_random_under_roar_and_kar(finished):
  _, workdir, out, _, _ = finished
  assert out["base"]["test_accuracy"] > 0.9
  rows = {(r["estimator"], r["mode"]): r for r in report.read_csv(
      os.path.join(workdir, "report", "results.csv"))}
  assert len(rows) == 6
  # Removing the ground-truth pixels (oracle) leaves nothing to learn: near
  # chance (0.25); removing half the pixels at random leaves the pattern
  # partly visible.
  assert rows[("oracle", "roar")]["mean_accuracy"] < 0.35
  assert (rows[("oracle", "roar")]["mean_accuracy"]
          < rows[("random", "roar")]["mean_accuracy"] - 0.1)
  # Keeping only the oracle's half keeps every informative pixel.
  assert rows[("oracle", "kar")]["mean_accuracy"] > 0.9
  assert (rows[("oracle", "kar")]["mean_accuracy"]
          > rows[("random", "kar")]["mean_accuracy"] + 0.1)
  # Without retraining the base model fails on any heavily degraded test set.
  assert rows[("oracle", "roar")]["no_retrain_accuracy"] < 0.35
  ranked = report.rank_estimators(list(rows.values()))
  assert ranked["roar"][0][0] == "oracle"
  # KAR: the oracle is at the top (the gradient may tie it at 100%).
  assert dict(ranked["kar"])["oracle"] == ranked["kar"][0][1]


def test_interrupted_grid_gives_each_result_exactly_once(finished):
  config, workdir, _, interrupted, resumed = finished
  records = load_results(workdir)
  units = {(r["estimator"], r["mode"], r["threshold"], r["seed"])
           for r in records}
  assert len(records) == len(units) == len(grid.all_units(config)) == 6
  # The rerun ran only the units without a result, the interrupted one first,
  # resuming from its step-100 checkpoint.
  assert resumed[0] == interrupted and len(resumed) == 5
  for r in records:
    assert r["steps"] == 200 and 0.0 <= r["test_accuracy"] <= 1.0
    assert r["config_hash"] == results.config_hash(config)
  # A third run finds nothing to do and writes the same report, byte for byte.
  folder = os.path.join(workdir, "report")
  before = {n: open(os.path.join(folder, n), "rb").read()
            for n in os.listdir(folder)}
  again = roar.run(config, workdir, run_unit=lambda *a: pytest.fail("rerun"))
  assert again["units"] == 0
  assert {n: open(os.path.join(folder, n), "rb").read()
          for n in os.listdir(folder)} == before
  summary = open(os.path.join(workdir, "report", "summary.md")).read()
  assert "Partial" not in summary and "6 retrains" in summary
  for name in ("roar.png", "kar.png", "index.html", "saliency.png"):
    assert os.path.getsize(os.path.join(workdir, "report", name)) > 0


def test_one_unit_runs_alone(finished):
  config, workdir, _, _, _ = finished
  config = copy.deepcopy(config)
  with config.unlocked():
    config.roar.unit = "random/roar/0.5/0"
  (unit,) = grid.all_units(config)
  assert unit == grid.Unit("random", "roar", 0.5, 0)
  assert grid.is_done(grid.plan_of(config, workdir), unit)
  with pytest.raises(ValueError, match="config.roar.unit"):
    grid.parse_unit("random/roar/0.5", ("channel_mean",))


def test_written_dataset_equals_on_the_fly(finished):
  config, workdir, _, _, _ = finished
  source = roar.sources.get_source(config.data)
  plan = grid.plan_of(config, workdir)
  fill = grid.channel_mean(config, plan, source)  # Stored by the grid.
  images = source.arrays("train")[0]
  np.testing.assert_allclose(fill, images.mean(axis=(0, 1, 2)), rtol=1e-9)
  written_config = copy.deepcopy(config)
  with written_config.unlocked():
    written_config.roar.degrade = "write"
  key = ("oracle", "kar", 0.5, "channel_mean")
  a = grid.degraded_source(config, plan, source, key, fill)
  b = grid.degraded_source(written_config, plan, source, key, fill)
  assert os.path.isdir(os.path.join(workdir, "datasets",
                                    "oracle__kar__t050"))
  for split in ("train", "test"):
    xa, xb = pipeline.as_numpy(a.load(split)), pipeline.as_numpy(b.load(split))
    np.testing.assert_array_equal(xa["index"], xb["index"])
    np.testing.assert_array_equal(xa["label"], xb["label"])
    np.testing.assert_array_equal(xa["image"], xb["image"])


def test_explain_mode_prints_its_gradient_passes(finished, capsys):
  config, workdir, *_ = finished
  from roar_jax import main  # pylint: disable=g-import-not-at-top
  out = main.run(config, workdir, "explain")  # Every shard is written.
  assert out["written_shards"] == 0
  # gradient: one pass; oracle and random: none.
  assert (out["gradient_passes"], out["gradient_passes_alone"]) == (1, 1)
  assert ("gradient passes per image: 1 (1 if each estimator were computed "
          "alone)") in capsys.readouterr().out


def test_load_gives_the_trained_model_and_its_data(finished):
  config, workdir, *_ = finished
  import roar_jax  # pylint: disable=g-import-not-at-top
  from roar_jax import saliency, training  # pylint: disable=g-import-not-at-top
  run = roar_jax.load(workdir)
  assert list(run.config.explain.estimators) == list(config.explain.estimators)
  images, labels = run.test_images(6, start=2)
  assert images.shape == (6, 32, 32, 3) and labels.shape == (6,)
  state = training.load_state(config, os.path.join(workdir, "base"))
  module, _ = training.load_model(config, os.path.join(workdir, "base"))
  expected = module.apply(training.variables_of(state), images, train=False)
  np.testing.assert_allclose(np.asarray(run.model.logits(images)),
                             np.asarray(expected), rtol=1e-5, atol=1e-5)
  maps = saliency.explain(run.model, images, method="gradient")
  fig = saliency.plot_grid(images, {"gradient": np.asarray(maps)})
  assert len(fig.axes) == 6 * 2


def test_metrics_ran_inside_the_grid(finished):
  _, workdir, *_ = finished
  folder = os.path.join(workdir, "report")
  import csv  # pylint: disable=g-import-not-at-top
  rows = list(csv.DictReader(open(os.path.join(folder, "metrics.csv"))))
  assert {(r["estimator"], r["metric"]) for r in rows} == {
      (e, m) for e in ("oracle", "random", "gradient")
      for m in ("deletion_auc", "insertion_auc", "road_morf_auc",
                "road_lerf_auc")}
  assert all(int(r["n"]) == 50 for r in rows)
  by = {(r["estimator"], r["metric"]): float(r["value"]) for r in rows}
  # A model trained to 100%: removing the oracle's pixels first destroys the
  # evidence fastest; keeping them (LeRF) keeps it.
  assert by["oracle", "road_morf_auc"] < by["random", "road_morf_auc"]
  assert by["oracle", "road_lerf_auc"] > by["random", "road_lerf_auc"]
  leak = list(csv.DictReader(open(os.path.join(folder, "leakage.csv"))))
  assert len(leak) == 6 and all(float(r["chance"]) == 0.25 for r in leak)


def _readme_python_section() -> list[str]:
  """The code blocks of the README's "## Python" section, in order."""
  text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
  section = text[text.index("\n## Python\n"):text.index("\n## Bring your own")]
  return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


def test_readme_python_section_runs_on_a_finished_run(finished, tmp_path,
                                                      monkeypatch):
  """The README's notebook walk-through, run as written on a finished toy
  run (only its workdir path replaced)."""
  from roar_jax.saliency import registry  # pylint: disable=g-import-not-at-top
  _, workdir, *_ = finished
  blocks = _readme_python_section()
  assert len(blocks) == 3
  monkeypatch.chdir(tmp_path)
  namespace = {}
  try:
    for block in blocks:
      exec(block.replace('"/tmp/roar_toy"', repr(workdir)), namespace)  # pylint: disable=exec-used
  finally:
    registry.unregister("gradient_x_delta")
  assert (tmp_path / "gradient.png").stat().st_size > 0
  images, maps = namespace["images"], namespace["maps"]
  assert images.shape == (8, 32, 32, 3) and maps.shape == images.shape
  levels = namespace["levels"]
  assert levels.dtype == np.uint8 and levels.shape == (8, 32, 32)
  # Level 0 holds the top 1% of each image's pixels (ceil of 1% of 1,024).
  assert all((lv == 0).sum() == 11 for lv in levels)
