"""The estimators added from the peers (Expected Gradients, Grad-CAM++,
Guided IG, Blur IG, LRP) through a toy ROAR grid: explained, ranked, scored
by the no-retrain metrics and retrained, like the built-in ones."""

import csv
import io

import numpy as np
import pytest

from conftest import load_config
from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import pipeline as roar
from roar_jax.data import rank_store
from roar_jax.data import synthetic

NEW = ("expected_gradients", "gradcam_pp", "guided_ig", "blur_ig",
       "lrp_epsilon_plus", "lrp_epsilon_gamma_box")


def _config():
  config = load_config("toy")
  with config.unlocked():
    config.data.toy.num_train = 300
    config.data.toy.num_test = 100
    config.explain.estimators = ("random",) + NEW
    config.explain.methods.eg_samples = 4
    config.explain.methods.guided_ig_steps = 8
    config.explain.methods.blur_ig_steps = 8
    config.roar.thresholds = (0.5,)
    config.roar.num_seeds = 1
    config.roar.modes = ("roar",)
    config.train.num_steps = 150
    config.metrics.names = ("deletion", "road_morf")
    config.metrics.num_images = 32
    config.metrics.leakage = False
  return config


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
  """The metrics stage over every new estimator (base model, explain stage,
  metrics), then one retrain unit of the grid (retraining reads a rank store
  as it reads any other: one unit shows the path)."""
  workdir = str(tmp_path_factory.mktemp("new_estimators"))
  config = _config()
  roar.run_metrics(config, roar.open_run(config, workdir, mode="metrics"))
  with config.unlocked():
    config.roar.unit = "lrp_epsilon_gamma_box/roar/0.5/0"
  out = roar.run(config, workdir)
  return config, workdir, out


def _rows(path):
  return list(csv.DictReader(io.StringIO(open(path).read())))


def test_every_new_estimator_is_ranked_scored_and_retrained(grid_run):
  config, workdir, out = grid_run
  wd = workdir_lib.Workdir(workdir)
  # The unit retrained on the images LRP's ranking degraded.
  records = [r for _, r in workdir_lib.iter_json(wd.sub("results"))]
  assert [(r["estimator"], r["mode"]) for r in records] == [
      ("lrp_epsilon_gamma_box", "roar")]
  assert 0.0 <= records[0]["test_accuracy"] <= 1.0
  metric_rows = _rows(wd.report("metrics.csv"))
  for est in NEW:
    assert {r["metric"] for r in metric_rows if r["estimator"] == est} == {
        "deletion_auc", "road_morf_auc"}


def test_new_estimators_find_the_pattern_before_random(grid_run):
  """On the toy data the class is a small pattern: a trained model's
  attributions put its pixels among the first removed, random does not
  (their mean level is about half the levels)."""
  config, workdir, _ = grid_run
  store = rank_store.RankStore(workdir)
  n = 100
  masks = synthetic.toy_masks(config.data.toy, "test")[:n]
  mean_level = {}
  for est in ("random",) + NEW:
    levels = store.lookup(est, "test", np.arange(n))
    levels = levels if levels.ndim == 3 else levels.mean(-1)
    mean_level[est] = float(levels[masks].mean())
  assert mean_level["random"] == pytest.approx(49.5, abs=3)
  for est in NEW:
    assert mean_level[est] < mean_level["random"] - 15, (est, mean_level)
