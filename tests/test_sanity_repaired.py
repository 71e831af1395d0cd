"""The repaired model randomization tests (bottom-up, eMPRT, sMPRT, random
logit): closed forms, and agreement with Quantus 0.6 on the torch twin of
the same SmallCNN (tests/references/sanity_repaired.npz, made by
tests/references/make_sanity_repaired.py: the same inputs, weights and
layer re-initializations on both sides; Quantus's explain_func returned
roar_jax's gradient maps of the twin's weights); then the four tests in the
sanity stage on the toy data (a width-4 SmallCNN trained 20 steps on 16 x 16
images), each record's values recomputed here from the model."""

import copy
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import load_config
from jax.sharding import Mesh
from scipy import stats

from roar_jax import models
from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.sanity import checks as sanity
from roar_jax.benchmark.sanity import maps as sanity_maps
from roar_jax.benchmark.sanity import models as sanity_models
from roar_jax.benchmark.sanity import randomization
from roar_jax.benchmark.sanity import repaired
from roar_jax.benchmark.sanity import repaired_tests
from roar_jax.benchmark.sanity import report as sanity_report
from roar_jax.benchmark.sanity import settings
from roar_jax.data import sources
from roar_jax.saliency import explainable
from roar_jax.saliency import explaining as saliency_api

REFERENCE = pathlib.Path(__file__).parent / "references" / (
    "sanity_repaired.npz")
LAYERS = ("conv1", "conv2", "conv3", "logits")
# Quantus's names of the twin's layers (torch modules), in the same order.
TWIN = {"convs.0": "conv1", "convs.1": "conv2", "convs.2": "conv3",
        "fc": "logits"}
# Scores are compared within ATOL. The maps are the same function of the
# same float32 weights and inputs on both sides; only float rounding could
# differ (Quantus's noise std is float32, ours float64) and swap the ranks
# of near-equal entries. Measured: at most 6e-17 for MPRT (three orders),
# 0 for eMPRT and the random logit, 1.1e-16 for sMPRT.
ATOL = 1e-6


@pytest.fixture(scope="module")
def ref():
  with np.load(REFERENCE) as z:
    data = {k: z[k] for k in z.files}
  width = data["params/logits/kernel"].shape[0] // 4
  data["module"] = models.SmallCNN(data["params/logits/kernel"].shape[1],
                                   width=width)
  data["trained"] = _params(data, "params")
  data["fresh"] = _params(data, "fresh")
  return data


def _params(data, prefix):
  return {name: {leaf: jnp.asarray(data[f"{prefix}/{name}/{leaf}"])
                 for leaf in ("kernel", "bias")} for name in LAYERS}


def _randomized(ref, layers):
  """The trained params with `layers` replaced by the stored re-inits."""
  return {**ref["trained"], **{l: ref["fresh"][l] for l in layers}}


def _maps(ref, params, images, targets):
  model = explainable(ref["module"], {"params": params})
  out = saliency_api.explain_all(
      model, jnp.asarray(images, jnp.float32), methods=("gradient",),
      target=jnp.asarray(targets, jnp.int32))
  return np.asarray(out["gradient"], np.float64)


def _mprt(ref, steps):
  """roar_jax's MPRT scores [1 + L, N]: the original row, then a step."""
  x, y = ref["images"], ref["labels"]
  original = _maps(ref, ref["trained"], x, y)
  rows = [repaired.spearman_flat(original, original)]
  for layers in steps:
    rows.append(repaired.spearman_flat(
        original, _maps(ref, _randomized(ref, layers), x, y)))
  return np.array(rows)


def test_bottom_up_steps_go_from_the_input_up():
  assert repaired.bottom_up_steps(LAYERS) == [
      ("conv1",), ("conv1", "conv2"), ("conv1", "conv2", "conv3"), LAYERS]
  # Its last step randomizes what the cascade's last step does.
  assert set(repaired.bottom_up_steps(LAYERS)[-1]) == set(
      randomization.cascading_steps(LAYERS)[-1])


@pytest.mark.parametrize("order", ["bottom_up", "top_down", "independent"])
def test_mprt_matches_quantus_in_every_layer_order(ref, order):
  layers = [TWIN[n] for n in ref[f"mprt_{order}_layers"][1:]]
  if order == "bottom_up":
    steps = repaired.bottom_up_steps(LAYERS)
  elif order == "top_down":
    steps = randomization.cascading_steps(LAYERS)
  else:
    steps = [(l,) for l in layers]  # Quantus goes bottom-up; ours top-down.
    assert sorted(steps) == sorted(randomization.independent_steps(LAYERS))
  # The layer each step adds is the one Quantus names for it.
  assert [s[-1] for s in steps] == layers
  np.testing.assert_allclose(_mprt(ref, steps), ref[f"mprt_{order}"],
                             rtol=0, atol=ATOL)


def test_emprt_matches_quantus(ref):
  assert int(ref["emprt_n_bins"]) == repaired.RepairedOptions().emprt_n_bins
  x, y = ref["images"], ref["labels"]
  original = _maps(ref, ref["trained"], x, y)
  full = _maps(ref, _randomized(ref, repaired.bottom_up_steps(LAYERS)[-1]),
               x, y)
  got = repaired.emprt(original, full, int(ref["emprt_n_bins"]))
  np.testing.assert_allclose(got["original"], ref["emprt_complexity"][0],
                             rtol=0, atol=ATOL)
  np.testing.assert_allclose(got["randomized"], ref["emprt_complexity"][1],
                             rtol=0, atol=ATOL)
  np.testing.assert_allclose(got["rise"], ref["emprt"], rtol=0, atol=ATOL)


def test_smprt_matches_quantus(ref):
  opts = repaired.RepairedOptions()
  assert int(ref["smprt_nr_samples"]) == opts.smprt_nr_samples
  assert float(ref["smprt_noise_magnitude"]) == opts.smprt_noise_magnitude
  x, y = ref["images"], ref["labels"]
  # Quantus's noise: NumPy's global generator from the stored seed, 49 draws
  # of randn(N, C, H, W) per smoothed batch, in its call order: the
  # reference maps, the original model again, then each bottom-up step.
  rng = np.random.RandomState(int(ref["smprt_seed"]))
  nchw = (x.shape[0], x.shape[3], x.shape[1], x.shape[2])

  def smoothed(params):
    normals = np.stack([rng.randn(*nchw).transpose(0, 2, 3, 1)
                        for _ in range(opts.smprt_nr_samples - 1)])
    return repaired.smooth(lambda imgs: _maps(ref, params, imgs, y), x,
                           normals, opts.smprt_noise_magnitude)

  reference = smoothed(ref["trained"])
  rows = [repaired.spearman_flat(reference, smoothed(ref["trained"]))]
  for layers in repaired.bottom_up_steps(LAYERS):
    rows.append(repaired.spearman_flat(
        reference, smoothed(_randomized(ref, layers))))
  assert [TWIN[n] for n in ref["smprt_layers"][1:]] == list(LAYERS)
  np.testing.assert_allclose(np.array(rows), ref["smprt"], rtol=0,
                             atol=ATOL)


def test_random_logit_matches_quantus(ref):
  x, y = ref["images"], ref["labels"]
  classes = int(ref["params/logits/kernel"].shape[1])
  # Quantus drew one index per batch of one image (seed 42 each time).
  off = repaired.other_classes(y, classes, np.full(len(y),
                                                   ref["random_logit_draw"]))
  np.testing.assert_array_equal(off, ref["random_logit_off"])
  got = repaired.ssim_flat(_maps(ref, ref["trained"], x, y),
                           _maps(ref, ref["trained"], x, off))
  np.testing.assert_allclose(got, ref["random_logit"], rtol=0, atol=ATOL)


def test_discrete_entropy_closed_forms():
  # Equal counts in k of the bins: log k nats; a constant map: 0.
  two = np.array([0.0, 0.0, 1.0, 1.0]).reshape(1, 2, 2, 1)
  assert repaired.discrete_entropy(two)[0] == pytest.approx(np.log(2))
  ramp = np.arange(100.0).reshape(1, 10, 10, 1)
  assert repaired.discrete_entropy(ramp, 100)[0] == pytest.approx(
      np.log(100))
  assert repaired.discrete_entropy(np.ones((1, 3, 3, 2)))[0] == 0.0
  # eMPRT's rise: log 100 / log 2 - 1; NaN from a constant original.
  out = repaired.emprt(two, ramp, 100)
  assert out["rise"][0] == pytest.approx(np.log(100) / np.log(2) - 1)
  assert np.isnan(repaired.emprt(np.ones((1, 2, 2, 1)), two)["rise"][0])


def test_spearman_flat_counts_every_channel_and_ignores_sign():
  rng = np.random.default_rng(0)
  a = rng.standard_normal((3, 4, 4, 2))
  np.testing.assert_allclose(repaired.spearman_flat(a, -a), 1.0)
  b = rng.standard_normal((3, 4, 4, 2))
  want = [stats.spearmanr(np.abs(p).ravel(), np.abs(q).ravel())[0]
          for p, q in zip(a, b)]
  np.testing.assert_allclose(repaired.spearman_flat(a, b), want, atol=1e-12)
  assert repaired.spearman_flat(a, -a, take_abs=False)[0] == pytest.approx(
      -1.0)


def test_ssim_flat_of_a_map_with_itself_or_a_multiple_is_one():
  rng = np.random.default_rng(1)
  a = rng.standard_normal((2, 8, 8, 3))
  np.testing.assert_allclose(repaired.ssim_flat(a, a), 1.0)
  # Each map over its own maximum: a positive multiple is the same map.
  np.testing.assert_allclose(repaired.ssim_flat(a, 5.0 * a), 1.0)
  assert np.all(repaired.ssim_flat(a, rng.standard_normal(a.shape)) < 0.2)


def test_other_classes_is_uniform_over_the_others():
  classes = np.array([0, 3, 9, 5])
  draws = np.array([0, 3, 8, 4])
  np.testing.assert_array_equal(
      repaired.other_classes(classes, 10, draws), [1, 4, 8, 4])
  # Every draw of [0, K-2] gives a different class, never the explained one.
  for c in range(10):
    got = repaired.other_classes(np.full(9, c), 10, np.arange(9))
    assert sorted(got) == [k for k in range(10) if k != c]
  with pytest.raises(ValueError, match="draws"):
    repaired.other_classes(classes, 10, np.array([9, 0, 0, 0]))


def test_smooth_averages_noisy_maps_and_the_clean_one():
  images = np.stack([np.zeros((2, 2, 1)), np.arange(4.0).reshape(2, 2, 1)])
  normals = np.ones((3, 2, 2, 2, 1))
  # The identity map: the mean of x + k * std (three noisy, one clean).
  got = repaired.smooth(lambda x: x, images, normals, 0.5)
  std = np.array([0.0, 1.5]).reshape(2, 1, 1, 1)  # 0.5 * (max - min).
  np.testing.assert_allclose(got, images + 3 * std / 4, rtol=1e-6)


def test_options_are_checked():
  assert repaired.RepairedOptions.from_config(None) == (
      repaired.RepairedOptions())
  with pytest.raises(ValueError, match="unknown fields"):
    repaired.RepairedOptions.from_config({"emprt_bins": 10})
  with pytest.raises(ValueError, match="ssim_window"):
    repaired.RepairedOptions(ssim_window=4)


# ---------------------------------------------------------------------------
# The repaired tests in the sanity stage (--mode=sanity), on the toy data.

STAGE_TESTS = ("cascading", "bottom_up", "emprt", "smprt", "random_logit")


def _toy_sanity_config():
  c = load_config("toy")
  c.model.small_cnn.width = 4
  c.data.image_size = 16
  c.data.toy.image_size = 16
  c.data.toy.num_train = 256
  c.data.toy.num_test = 64
  c.train.batch_size = 32
  c.train.eval_batch_size = 64
  c.train.num_steps = 20
  c.train.log_every = 10
  c.train.checkpoint_every = 20
  c.sanity = ml_collections.ConfigDict({
      "models": ("small_cnn",), "estimators": ("gradient",),
      "controls": ("random", "sobel"), "tests": STAGE_TESTS,
      "num_images": 6, "init": "original", "init_std": 0.01,
      "reset_batch_stats": True, "target": "predicted",
      "min_train_accuracy": 0.95, "num_visualize": 1,
      "random_labels": {"num_train": 0, "num_steps": 10, "max_steps": 10},
      # Few samples: the test checks the wiring, not Quantus's default 50.
      "repaired": {"smprt_nr_samples": 3}})
  return c


@pytest.fixture(scope="module")
def stage(tmp_path_factory, fast_compiles):
  del fast_compiles
  workdir = str(tmp_path_factory.mktemp("sanity_repaired"))
  config = _toy_sanity_config()
  source = sources.get_source(config.data)
  mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
  out = sanity.run(config, workdir, source=source, mesh=mesh)
  module, variables = sanity_models.load_trained(
      settings.model_config(config, "small_cnn"),
      workdir_lib.Workdir(workdir).sanity("small_cnn") + "/true_labels",
      source, mesh)
  images = sanity_maps.sample_test_images(config, source)
  return {"config": config, "workdir": workdir, "out": out,
          "module": module, "variables": variables, "images": images,
          "source": source}


def _record(stage, test):
  return next(r for r in stage["out"]["records"] if r["test"] == test)


def _row(stage, test, metric, step, estimator="gradient"):
  (row,) = [r for r in _record(stage, test)["rows"]
            if r["metric"] == metric and r["step"] == step
            and r["estimator"] == estimator]
  return row


def _stage_maps(stage, layers, target=None):
  """The gradient maps of the trained model with `layers` re-initialized
  as the stage does (its key), computed here independently."""
  config, module = stage["config"], stage["module"]
  key = jax.random.fold_in(jax.random.key(int(config.seed)),
                           settings.REINIT_STREAM)
  variables = randomization.randomize(
      module, stage["variables"], layers, key,
      input_shape=stage["images"]["image"].shape[1:])
  return sanity_maps.explain(config, module, variables, stage["images"],
                             ("gradient",), target=target)["gradient"]


def test_stage_bottom_up_randomizes_from_the_input_up(stage):
  rec = _record(stage, "bottom_up")
  assert [s["name"] for s in rec["steps"]] == [
      "original", "conv1", "conv2", "conv3", "logits"]
  assert rec["steps"][2]["layers"] == ["conv1", "conv2"]
  assert _row(stage, "bottom_up", "spearman_flat", 0)["mean"] == 1.0
  reference = _stage_maps(stage, ())
  for step, layers in enumerate(repaired.bottom_up_steps(LAYERS), start=1):
    want = repaired.spearman_flat(reference, _stage_maps(stage, layers))
    assert _row(stage, "bottom_up", "spearman_flat", step)["mean"] == (
        pytest.approx(np.mean(want), abs=1e-9))
  # Its last step randomizes every layer, as the cascade's last step does:
  # the same weights, the same maps, the same similarities.
  for metric in ("spearman_abs", "spearman_signed", "ssim", "hog"):
    assert _row(stage, "bottom_up", metric, 4)["mean"] == pytest.approx(
        _row(stage, "cascading", metric, 4)["mean"], abs=1e-12)


def test_stage_emprt_is_the_entropy_rise_under_full_randomization(stage):
  rec = _record(stage, "emprt")
  assert rec["steps"][1]["layers"] == list(LAYERS)
  assert rec["n_bins"] == 100
  got = repaired.emprt(_stage_maps(stage, ()), _stage_maps(stage, LAYERS))
  for metric, step, key in (("complexity", 0, "original"),
                            ("complexity", 1, "randomized"),
                            ("emprt", 1, "rise")):
    assert _row(stage, "emprt", metric, step)["mean"] == pytest.approx(
        np.mean(got[key]), abs=1e-9)
  # A control ignores the model: its complexity is the same at both steps.
  (c0,) = [r for r in rec["control_rows"] if r["estimator"] == "random"
           and r["metric"] == "complexity" and r["step"] == 0]
  (c1,) = [r for r in rec["control_rows"] if r["estimator"] == "random"
           and r["metric"] == "complexity" and r["step"] == 1]
  assert c0["mean"] == c1["mean"]


def test_stage_smprt_compares_denoised_maps_bottom_up(stage):
  config, images = stage["config"], stage["images"]
  normals = repaired_tests.smooth_normals(config, images, 3)
  assert normals.shape == (2, *images["image"].shape)
  assert [s["name"] for s in _record(stage, "smprt")["steps"]] == [
      "original", "conv1", "conv2", "conv3", "logits"]
  # The same noise for every model compared: step 0 is exactly 1.
  assert _row(stage, "smprt", "spearman_flat", 0)["mean"] == 1.0
  key = jax.random.fold_in(jax.random.key(int(config.seed)),
                           settings.REINIT_STREAM)

  def smoothed(layers):
    variables = randomization.randomize(
        stage["module"], stage["variables"], layers, key,
        input_shape=images["image"].shape[1:])
    targets = sanity_maps.predictions(stage["module"], variables, images)
    return repaired.smooth(
        lambda x: sanity_maps.explain(
            config, stage["module"], variables, {**images, "image": x},
            ("gradient",), target=targets)["gradient"],
        images["image"], normals, 0.1).astype(np.float32)  # As stored.

  want = repaired.spearman_flat(smoothed(()), smoothed(("conv1",)))
  assert _row(stage, "smprt", "spearman_flat", 1)["mean"] == pytest.approx(
      np.mean(want), abs=1e-12)


def test_stage_random_logit_explains_another_class(stage):
  rec = _record(stage, "random_logit")
  explained = np.array(rec["classes"]["explained"])
  other = np.array(rec["classes"]["other"])
  assert np.all(other != explained) and np.all((other >= 0) & (other < 4))
  pred = sanity_maps.predictions(stage["module"], stage["variables"],
                                 stage["images"])
  np.testing.assert_array_equal(explained, pred)
  want = repaired.ssim_flat(_stage_maps(stage, ()),
                            _stage_maps(stage, (), target=other))
  assert _row(stage, "random_logit", "ssim_flat", 1)["mean"] == (
      pytest.approx(np.mean(want), abs=1e-9))
  assert {r["metric"] for r in rec["control_rows"]} >= {"ssim_flat", "ssim"}


def test_stage_report_has_the_repaired_tests(stage):
  wd = workdir_lib.Workdir(stage["workdir"])
  rows = sanity_report.read_csv(wd.report("sanity.csv"))
  assert {r["test"] for r in rows} == set(STAGE_TESTS)
  (row,) = [r for r in rows if r["test"] == "emprt" and r["kind"] ==
            "estimator" and r["metric"] == "emprt"]
  assert row["mean"] == pytest.approx(
      _row(stage, "emprt", "emprt", 1)["mean"], rel=1e-5)
  for name in ("sanity_bottom_up.png", "sanity_smprt.png",
               "sanity_bottom_up.pdf"):
    assert workdir_lib.exists(wd.report(name)), name
  text = workdir_lib.read_bytes(wd.report("sanity.md")).decode()
  for title in ("eMPRT", "sMPRT", "Random logit", "Bottom-up"):
    assert title in text


def test_stage_fingerprints_follow_each_tests_options(stage):
  config = stage["config"]
  changed = copy.deepcopy(config)
  changed.sanity.repaired.smprt_nr_samples = 4
  source = stage["source"]
  wd = workdir_lib.Workdir(stage["workdir"])
  before = sanity.make_plan(config, wd, source).models[0].records
  after = sanity.make_plan(changed, wd, source).models[0].records
  stale = {test for (test, _), a in before.items()
           if a.fingerprint != after[(test, "gradient")].fingerprint}
  assert stale == {"smprt"}


def test_stage_config_errors_name_the_field():
  config = _toy_sanity_config()
  config.sanity.tests = ("bottom_up", "emprt_fast")
  with pytest.raises(ValueError, match="unknown test 'emprt_fast'"):
    sanity.validate_config(config)
  config = _toy_sanity_config()
  config.sanity.repaired.emprt_n_bins = 1
  with pytest.raises(ValueError, match="emprt_n_bins"):
    sanity.validate_config(config)
