"""The sanity-check stage end to end on Fashion-MNIST (reduced).

One module-scoped run trains the paper's CNN and MLP briefly (100 steps of 32
images from the first 2,000 Fashion-MNIST training images; and on 64 images
with permuted labels), runs the three tests for three estimators on 40 test
images and writes the report; the tests below read its records and files.
"""

import copy
import json
import math
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest
from conftest import load_config
from jax.sharding import Mesh

from roar_jax import provenance as provenance_lib
from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.sanity import checks as sanity
from roar_jax.benchmark.sanity import maps as sanity_maps
from roar_jax.benchmark.sanity import models as sanity_models
from roar_jax.benchmark.sanity import report as sanity_report

ESTIMATORS = ("gradient", "gradcam", "sg.gradient")
# The models train on one device: the sanity checks shard nothing themselves
# (the trainer's tests cover its sharding), and on a 2-core machine eight
# simulated devices only add all-reduce overhead to these small models.
MESH = Mesh(np.array(jax.devices()[:1]), ("data",))


def _config(shared_data):
  c = load_config("fashion_mnist_sanity")
  c.data.path = str(shared_data / "fashion-mnist")
  # A narrower MLP than the paper's 2500-1500-500: the tests of the MLP check
  # the driver (layer order, skipped GradCAM, the data test), not the paper's
  # numbers, and its 6.5M parameters would dominate the run time.
  c.model.sanity_mlp = ml_collections.ConfigDict({"hidden": (256, 128, 64)})
  c.data.num_train = 2000
  c.data.num_test = 200
  c.train.batch_size = 32
  c.train.num_steps = 100
  c.train.eval_batch_size = 200
  c.train.checkpoint_every = 100
  c.train.log_every = 50
  c.explain.num_samples = 4
  c.sanity.estimators = ESTIMATORS
  c.sanity.num_images = 40
  c.sanity.num_visualize = 1
  c.sanity.random_labels.num_train = 64
  c.sanity.random_labels.num_steps = 60
  c.sanity.random_labels.max_steps = 240
  return c


@pytest.fixture(scope="module")
def result(shared_data, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("sanity"))
  config = _config(shared_data)
  out = sanity.run(config, workdir, mesh=MESH)
  return config, workdir, out


def _rows(out, test, model, estimator=None, metric=None):
  rec = next(r for r in out["records"] if r["test"] == test
             and r["model"] == model)
  return [r for r in rec["rows"]
          if (estimator is None or r["estimator"] == estimator)
          and (metric is None or r["metric"] == metric)]


def _value(out, test, model, estimator, metric, step):
  (row,) = [r for r in _rows(out, test, model, estimator, metric)
            if r["step"] == step]
  return row


def test_gradient_similarity_collapses_after_full_randomization(result):
  # The paper's finding (Figs. 4, 20): the gradient is sensitive to the
  # weights; with the whole CNN randomized its maps are far less similar to
  # the trained model's than with the logits layer alone randomized. (Already
  # after the top layer the similarity is low, ~0.2, as in the paper's
  # MNIST/Fashion-MNIST curves.) Margins: the means are over 40 images with
  # per-image stds below 0.12, so their standard errors are under 0.02; the
  # margins are more than 2.5 standard errors of the difference.
  _, _, out = result
  for metric, margin in (("spearman_signed", 0.15), ("spearman_abs", 0.05),
                         ("spearman_abs_fg", 0.05), ("ssim", 0.05)):
    top = _value(out, "cascading", "sanity_cnn", "gradient", metric, 1)
    full = _value(out, "cascading", "sanity_cnn", "gradient", metric, 4)
    assert top["step_name"] == "logits" and full["step_name"] == "conv1"
    assert full["layers"] == "logits+fc1+conv2+conv1"
    assert full["mean"] < top["mean"] - margin, (metric, top, full)
  # Signed, it ends within noise of the random-map floor. (The all-pixel ABS
  # correlation keeps ~0.1: a random CNN's gradient still separates the
  # object from the black background, the paper's edge-detector effect.)
  full = _value(out, "cascading", "sanity_cnn", "gradient", "spearman_signed",
                4)
  assert abs(full["mean"] - full["floor_mean"]) < 0.05, full


def test_original_step_compares_the_maps_with_themselves(result):
  _, _, out = result
  for test in ("cascading", "independent"):
    for model in ("sanity_cnn", "sanity_mlp"):
      rows = [r for r in _rows(out, test, model) if r["step"] == 0]
      assert rows
      for r in rows:
        assert r["mean"] == pytest.approx(1.0) and r["std"] < 1e-9, r
        # The floor: an independent random map, near zero (HOG is
        # non-negative, slightly positive; see test_sanity.py).
        assert abs(r["floor_mean"]) < (0.1 if r["metric"] == "hog" else 0.05)


def test_steps_follow_the_layers_top_down(result):
  _, _, out = result
  rec = {(r["test"], r["model"]): r for r in out["records"]}
  cnn = rec[("cascading", "sanity_cnn")]
  assert [s["name"] for s in cnn["steps"]] == [
      "original", "logits", "fc1", "conv2", "conv1"]
  assert cnn["steps"][2]["layers"] == ["logits", "fc1"]
  mlp = rec[("independent", "sanity_mlp")]
  assert [s["layers"] for s in mlp["steps"][1:]] == [
      ["logits"], ["fc3"], ["fc2"], ["fc1"]]


def test_mlp_skips_gradcam_with_a_note(result):
  _, _, out = result
  mlp = {r["estimator"] for r in _rows(out, "cascading", "sanity_mlp")}
  cnn = {r["estimator"] for r in _rows(out, "cascading", "sanity_cnn")}
  assert mlp == {"gradient", "sg.gradient"}
  assert cnn == set(ESTIMATORS)
  rec = next(r for r in out["records"] if r["model"] == "sanity_mlp")
  assert "features" in rec["meta"]["skipped_estimators"]["gradcam"]


def test_data_randomization(result):
  _, _, out = result
  for model in ("sanity_cnn", "sanity_mlp"):
    rec = next(r for r in out["records"] if r["test"] == "data"
               and r["model"] == model)
    d = rec["data"]
    assert d["num_train"] == 64
    # Fitted its permuted labels, and learned nothing that transfers: test
    # accuracy near chance (10 classes), far below the true-label model's.
    assert d["train_accuracy"] >= 0.95 and rec["status"] == "compared"
    assert d["test_accuracy"] < 0.3
    assert rec["meta"]["trained_test_accuracy"] > 0.6
    rows = rec["rows"]
    assert {r["estimator"] for r in rows} <= set(ESTIMATORS)
    assert all(r["test_accuracy"] == d["test_accuracy"] for r in rows)


def test_report_files_and_csv(result):
  config, workdir, out = result
  report = os.path.join(workdir, "report")
  for name in ("sanity_cascading.png", "sanity_independent.png",
               "sanity_data.png", "sanity.csv", "sanity.md",
               "sanity_cascading_maps_sanity_cnn.png",
               "sanity_cascading_maps_sanity_mlp.png",
               "sanity_data_maps_sanity_cnn.png"):
    path = os.path.join(report, name)
    assert os.path.getsize(path) > 1000, name
  rows = sanity_report.read_csv(os.path.join(report, "sanity.csv"))
  assert len(rows) == sum(len(r["rows"]) + len(r["control_rows"])
                          for r in out["records"])
  for r in rows:
    assert r["init"] == "original" and r["target"] == "predicted"
    assert r["seed"] == config.seed and r["batch_norm"].startswith("no ")
  # A CSV value is the record's value.
  rec = _value(out, "independent", "sanity_cnn", "gradcam", "ssim", 2)
  (row,) = [r for r in rows if r["test"] == "independent"
            and r["model"] == "sanity_cnn" and r["estimator"] == "gradcam"
            and r["metric"] == "ssim" and r["step"] == 2]
  assert row["mean"] == pytest.approx(rec["mean"], rel=1e-5)
  md = open(os.path.join(report, "sanity.md")).read()
  assert "Class explained: the class predicted by the model" in md
  assert "re-run" in md and "Seeds" in md


def test_rerun_skips_finished_parts(result, monkeypatch):
  config, workdir, out = result
  before = _report_bytes(workdir)

  def fail(*args, **kwargs):
    raise AssertionError("a finished part was recomputed")

  monkeypatch.setattr(sanity_maps, "explain", fail)
  monkeypatch.setattr(sanity_models.training, "train_and_evaluate", fail)
  again = sanity.run(config, workdir, mesh=MESH)
  key = lambda r: (r["test"], r["model"])
  assert sorted(map(key, again["records"])) == sorted(map(key, out["records"]))
  by_key = {key(r): r for r in out["records"]}
  for r in again["records"]:
    for part in ("rows", "control_rows"):
      assert json.dumps(r[part], sort_keys=True) == json.dumps(
          by_key[key(r)][part], sort_keys=True)
  # An unchanged rerun writes the same report, byte for byte, readable by
  # others (0644 under the default umask).
  assert _report_bytes(workdir) == before
  umask = os.umask(0)
  os.umask(umask)
  for name in before:
    mode = os.stat(os.path.join(workdir, "report", name)).st_mode & 0o777
    assert mode == 0o666 & ~umask, (name, oct(mode))


def test_refuses_to_compare_below_the_accuracy_floor(result, tmp_path):
  config, workdir, _ = result
  config = copy.deepcopy(config)  # The fixture's config stays as it was.
  # Reuse the trained MLP; train the random-label one for one step only.
  shutil.copytree(os.path.join(workdir, "sanity", "sanity_mlp",
                               "true_labels"),
                  tmp_path / "sanity" / "sanity_mlp" / "true_labels")
  config.sanity.models = ("sanity_mlp",)
  config.sanity.tests = ("data",)
  config.sanity.random_labels.num_steps = 1
  config.sanity.random_labels.max_steps = 1
  out = sanity.run(config, str(tmp_path), mesh=MESH)
  (rec,) = out["records"]
  assert rec["status"] == "refused" and rec["rows"] == []
  assert rec["data"]["steps"] == 1
  assert rec["data"]["train_accuracy"] < 0.95
  rows = sanity_report.read_csv(tmp_path / "report" / "sanity.csv")
  assert [r["status"] for r in rows] == ["refused"]
  assert math.isclose(rows[0]["train_accuracy"],
                      rec["data"]["train_accuracy"], rel_tol=1e-5)
  assert os.path.exists(tmp_path / "report" / "sanity_data.png")
  assert "NOT compared" in open(tmp_path / "report" / "sanity.md").read()


def test_random_label_training_doubles_steps_until_the_floor(
    shared_data, tmp_path, monkeypatch):
  calls = []

  def fake_train(cfg, workdir, *, source, mesh):  # accuracy = steps / 100
    del workdir, source, mesh
    calls.append(cfg.train.num_steps)
    assert cfg.train.eval_train
    return {"train_eval_accuracy": cfg.train.num_steps / 100,
            "test_accuracy": 0.1, "steps": cfg.train.num_steps}

  monkeypatch.setattr(sanity_models.training, "train_and_evaluate",
                      fake_train)
  c = _config(shared_data)
  c.sanity.random_labels.num_steps = 10
  c.sanity.random_labels.max_steps = 120
  out = sanity_models.train_random_labels(c, str(tmp_path), None)
  assert calls == [10, 20, 40, 80, 120] and out["steps"] == 120
  calls.clear()
  c.sanity.min_train_accuracy = 0.3
  out = sanity_models.train_random_labels(c, str(tmp_path), None)
  assert out["steps"] == 40
  assert calls == [10, 20, 40]
  # A rerun after an earlier doubling continues from the round it reached.
  calls.clear()
  with open(tmp_path / "metrics.json", "w") as f:
    json.dump({"steps": 80, "train_eval_accuracy": 0.8}, f)
  out = sanity_models.train_random_labels(c, str(tmp_path), None)
  assert out["steps"] == 80
  assert calls == []


def test_bad_config_names_the_field(shared_data):
  c = _config(shared_data)
  c.sanity.estimators = ("gradient", "nope")
  with pytest.raises(ValueError, match="config.sanity.estimators"):
    sanity.validate_config(c)
  c = _config(shared_data)
  c.sanity.target = "true"
  with pytest.raises(ValueError, match="config.sanity.target"):
    sanity.validate_config(c)
  c = _config(shared_data)
  c.sanity.similarity.hog_correlation = "kendall"
  with pytest.raises(ValueError, match="hog_correlation"):
    sanity.validate_config(c)


# ---------------------------------------------------------------------------
# Provenance: a changed config never reuses artifacts made under another.


def _report_bytes(workdir):
  report = os.path.join(workdir, "report")
  return {n: open(os.path.join(report, n), "rb").read()
          for n in sorted(os.listdir(report))}


def test_artifacts_live_under_sanity_with_provenance(result):
  _, workdir, _ = result
  root = os.path.join(workdir, "sanity", "sanity_cnn")
  for folder in ("true_labels", "random_labels_64", "reference/gradient",
                 "cascading/gradcam", "independent/sg.gradient",
                 "data/gradient"):
    prov = json.load(open(os.path.join(root, folder, "provenance.json")))
    assert len(prov["fingerprint"]) == 16, folder
  # The random-label model's fields: its own training, not the steps of a
  # round; the true-label model's: no other model's options.
  prov = json.load(open(os.path.join(root, "random_labels_64",
                                     "provenance.json")))
  assert prov["fields"]["sanity.random_labels.num_train"] == 64
  assert "train.num_steps" not in prov["fields"]
  prov = json.load(open(os.path.join(root, "true_labels", "provenance.json")))
  assert prov["fields"]["train.learning_rate"] == 1e-3
  assert not any(k.startswith("model.sanity_mlp") for k in prov["fields"])
  # The test records chain to the reference maps, and those to the model.
  ref = json.load(open(os.path.join(root, "reference", "gradient",
                                    "provenance.json")))
  assert ref["inputs"] == {"model": prov["fingerprint"]}
  rec = json.load(open(os.path.join(root, "data", "gradient",
                                    "provenance.json")))
  assert rec["inputs"]["reference"] == ref["fingerprint"]
  assert not os.path.exists(os.path.join(workdir, "sanity_cnn"))


def test_changed_config_stops_before_any_work_naming_the_field(
    result, monkeypatch):
  config, workdir, _ = result
  config = copy.deepcopy(config)
  config.train.learning_rate = 2e-3
  before = _report_bytes(workdir)

  def fail(*args, **kwargs):
    raise AssertionError("work was done")

  monkeypatch.setattr(sanity_models.training, "train_and_evaluate", fail)
  monkeypatch.setattr(sanity_maps, "explain", fail)
  with pytest.raises(workdir_lib.WorkdirError) as e:
    sanity.run(config, workdir, mesh=MESH)
  message = str(e.value)
  assert "\n" not in message and "train.learning_rate" in message
  assert "sanity true-label model" in message and "--recompute" in message
  assert _report_bytes(workdir) == before


def test_recompute_moves_only_the_stale_artifacts_aside(result, tmp_path,
                                                        monkeypatch):
  config, workdir, _ = result
  copy_dir = tmp_path / "w"
  shutil.copytree(workdir, copy_dir)
  config = copy.deepcopy(config)
  config.sanity.init_std = 0.02  # Only the randomization records use it.

  class Stop(Exception):
    pass

  def stop(*args, **kwargs):
    raise Stop()

  monkeypatch.setattr(sanity, "_run_model", stop)
  with pytest.raises(workdir_lib.WorkdirError, match="sanity.init_std"):
    sanity.run(config, str(copy_dir), mesh=MESH)
  with pytest.raises(Stop):
    sanity.run(config, str(copy_dir), mesh=MESH, recompute=True)
  (stamp,) = os.listdir(copy_dir / "stale")
  moved = copy_dir / "stale" / stamp / "sanity" / "sanity_cnn"
  assert sorted(os.listdir(moved)) == ["cascading", "independent"]
  assert sorted(os.listdir(moved / "cascading")) == sorted(ESTIMATORS)
  root = copy_dir / "sanity" / "sanity_cnn"
  assert not (root / "cascading").exists() or not os.listdir(
      root / "cascading")
  for kept in ("true_labels", "random_labels_64", "data/gradient",
               "reference/gradient"):
    assert (root / kept / "provenance.json").exists(), kept


def test_extending_the_estimators_reuses_every_finished_artifact(result):
  config, workdir, _ = result
  config = copy.deepcopy(config)
  config.sanity.estimators = ESTIMATORS + ("gradient_x_input",)
  source = sanity.sources.get_source(config.data)
  plan = sanity.make_plan(config, workdir_lib.Workdir(workdir), source)
  assert provenance_lib.check(plan.all()) == []
  for mplan in plan.models:
    for test in config.sanity.tests:
      assert mplan.pending(test) == ("gradient_x_input",)
