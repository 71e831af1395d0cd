"""The sanity checks on the CIFAR-10 config's ResNet-18 and small CNN.

Tiny, for CI: the in-repo CIFAR-10 fixture (200 training and 100 test JPEGs),
width-8 models trained for a few dozen steps, 6 test images, the gradient and
the two controls. The run checks that the stage handles ResNets (BatchNorm,
residual blocks, 11 layers) end to end, that a randomized block changes the
maps, and that the controls go through every test.
"""

import os

import jax
import numpy as np
import pytest
from conftest import FIXTURES, load_config
from jax.sharding import Mesh

from roar_jax.benchmark.sanity import checks as sanity
from roar_jax.benchmark.sanity import report as sanity_report

MESH = Mesh(np.array(jax.devices()[:1]), ("data",))


# These tests compile far more than they run.
pytestmark = pytest.mark.usefixtures("fast_compiles")


def _config(data_dir: str):
  c = load_config("cifar10")
  c.data.path = os.path.join(FIXTURES, "cifar10-mini.tar.gz")
  c.data.data_dir = data_dir
  c.data.augment = "none"
  c.model.resnet18.width = 8
  c.model.small_cnn.width = 8
  c.train.batch_size = 32
  c.train.eval_batch_size = 100
  c.train.num_steps = 20
  c.train.optimizer = "adam"
  c.train.learning_rate = 3e-3
  c.train.weight_decay = 0.0
  c.train.schedule = "constant"
  c.train.warmup_steps = 0
  c.train.checkpoint_every = 1000
  c.train.log_every = 1000
  c.explain.chunk_size = 0
  sc = load_config("fashion_mnist_sanity").sanity
  sc.models = ("resnet18", "small_cnn")
  sc.estimators = ("gradient",)
  sc.num_images = 6
  sc.num_visualize = 0  # No map grids: tests/test_sanity_run.py draws them.
  # One round of 80 steps fits the 32 permuted labels (each round of the
  # doubling compiles the trainer anew: the test keeps to one).
  sc.random_labels.num_train = 32
  sc.random_labels.num_steps = 80
  sc.random_labels.max_steps = 80
  sc.random_labels.learning_rate = 3e-3
  c.sanity = sc
  return c


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("sanity"))
  config = _config(str(tmp_path_factory.mktemp("data")))
  return workdir, sanity.run(config, workdir, mesh=MESH)


@pytest.fixture(params=["resnet18", "small_cnn"])
def result(request, run):
  workdir, out = run
  records = [r for r in out["records"] if r["model"] == request.param]
  return request.param, workdir, {"records": records}


def _rows(out, test, kind="rows"):
  (rec,) = [r for r in out["records"] if r["test"] == test]
  return rec, rec[kind]


def test_every_randomized_layer_changes_the_maps(result):
  model, _, out = result
  rec, rows = _rows(out, "independent")
  names = [s["name"] for s in rec["steps"][1:]]
  if model == "resnet18":
    assert names[:2] == ["logits", "stage4_block2"]
    assert len(names) == 11 and names[-1] == "stem_conv"
  for r in rows:
    if r["metric"] == "spearman_signed" and r["step"] > 0:
      # A block passed through as the identity would leave the network
      # without it, not randomized; a randomized one changes the gradient
      # of every image (the maps are never bit-identical to the trained
      # model's: similarity 1 would mean nothing changed).
      assert r["mean"] < 0.99, (model, r["step_name"], r["mean"])
  rec, rows = _rows(out, "cascading")
  full = [r for r in rows if r["metric"] == "spearman_signed"
          and r["step"] == len(rec["steps"]) - 1]
  assert full and abs(full[0]["mean"]) < 0.5, full


def test_controls_go_through_every_test(result):
  _, workdir, out = result
  for test in ("cascading", "independent", "data"):
    rec, rows = _rows(out, test, "control_rows")
    if rec["status"] != "compared":
      continue
    assert {r["estimator"] for r in rows} == {"random", "sobel"}
    assert {r["reference"] for r in rows} == {"gradient"}
    steps = {r["step"] for r in rows}
    assert steps == {s["step"] for s in rec["steps"]} - (
        {0} if test == "data" else set())
    # They ignore the model: the same similarity at every step.
    for control in ("random", "sobel"):
      values = {r["mean"] for r in rows if r["estimator"] == control
                and r["metric"] == "spearman_abs"}
      assert len(values) == 1, (test, control, values)
  # The CSV holds each control's similarity per step.
  csv_rows = sanity_report.read_csv(os.path.join(workdir, "report",
                                                 "sanity.csv"))
  sobel = [r for r in csv_rows if r["estimator"] == "sobel"
           and r["test"] == "cascading" and r["metric"] == "spearman_abs"
           and r["model"] == out["records"][0]["model"]]
  rec, _ = _rows(out, "cascading")
  assert sorted(r["step"] for r in sobel) == list(range(len(rec["steps"])))
  assert all(r["kind"] == "control" and r["reference"] == "gradient"
             for r in sobel)
