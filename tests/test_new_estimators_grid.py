"""The estimators added from the peers (Expected Gradients, Grad-CAM++,
Guided IG, Blur IG, LRP) through the toy pipeline: explained, ranked into
rank stores and scored by the no-retrain metrics, like the built-in ones.
(A retrain reads a rank store whatever made it: tests/test_roar_e2e.py.)"""

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
    config.train.num_steps = 150
    config.metrics.names = ("deletion", "road_morf")
    config.metrics.num_images = 32
    config.metrics.leakage = False
  return config


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
  """The metrics stage over every new estimator: base model, explain stage
  (both splits, as a grid needs them), metrics."""
  workdir = str(tmp_path_factory.mktemp("new_estimators"))
  config = _config()
  roar.run_metrics(config, roar.open_run(config, workdir, mode="metrics"))
  return config, workdir


def _rows(path):
  return list(csv.DictReader(io.StringIO(open(path).read())))


def test_every_new_estimator_is_scored(grid_run):
  _, workdir = grid_run
  wd = workdir_lib.Workdir(workdir)
  metric_rows = _rows(wd.report("metrics.csv"))
  for est in NEW:
    assert {r["metric"] for r in metric_rows if r["estimator"] == est} == {
        "deletion_auc", "road_morf_auc"}
  # Deleting the pattern first drops the class sooner than deleting at
  # random: every new estimator's interval lies below random's (measured:
  # highs 0.20-0.42 against random's low 0.44, on 32 images).
  deletion = {r["estimator"]: r for r in metric_rows
              if r["metric"] == "deletion_auc"}
  for est in NEW:
    assert float(deletion[est]["ci95_high"]) < float(
        deletion["random"]["ci95_low"]), (est, deletion[est])


@pytest.mark.parametrize("split,n", [("test", 100), ("train", 300)])
def test_new_estimators_find_the_pattern_before_random(grid_run, split, n):
  """On the toy data the class is a small pattern: a trained model's
  attributions put its pixels among the first removed, random does not
  (their mean level is about half the levels). The training split is the
  one ROAR degrades."""
  config, workdir = grid_run
  store = rank_store.RankStore(workdir)
  masks = synthetic.toy_masks(config.data.toy, split)[:n]
  mean_level = {}
  for est in ("random",) + NEW:
    levels = store.lookup(est, split, np.arange(n))
    levels = levels if levels.ndim == 3 else levels.mean(-1)
    mean_level[est] = float(levels[masks].mean())
  assert mean_level["random"] == pytest.approx(49.5, abs=3)
  for est in NEW:
    assert mean_level[est] < mean_level["random"] - 15, (est, mean_level)
