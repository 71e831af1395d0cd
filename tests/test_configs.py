"""Every config loads and validates; the paper configs carry the paper's grid."""

import re

import pytest

from conftest import REPO, load_config
from roar_jax.benchmark.roar import estimator_names
from roar_jax.config import defaults as config_lib
from roar_jax.config import known_fields
from roar_jax.config import validation as validate

CONFIGS = ("toy", "cifar10", "cifar10_fast", "cifar10_study",
           "cifar10_small_study", "cifar10_controls_study", "fashion_mnist",
           "fashion_mnist_study", "imagenet_resnet50", "food101_resnet50",
           "birdsnap_resnet50", "fashion_mnist_sanity")


@pytest.mark.parametrize("name", CONFIGS)
def test_config_validates(name):
  validate.validate(load_config(name), "roar")


@pytest.mark.parametrize("name,batch,base_lr,steps", [
    ("imagenet_resnet50", 4096, 0.1, 32_000),
    ("food101_resnet50", 256, 0.7, 20_000),
    ("birdsnap_resnet50", 256, 1.0, 20_000),
])
def test_paper_configs(name, batch, base_lr, steps):
  c = load_config(name)
  assert c.model.name == "resnet50" and c.data.image_size == 224
  assert c.train.batch_size == batch and c.train.num_steps == steps
  assert c.train.learning_rate == pytest.approx(base_lr * batch / 256)
  assert c.explain.estimators == (config_lib.PAPER_ESTIMATORS
                                  + config_lib.PAPER_SQUARED)
  assert len(c.explain.estimators) == 17  # Table 2's 14 and Fig. 6's 3.
  assert c.explain.granularity == "value"
  assert (c.explain.num_samples, c.explain.ig_steps) == (15, 25)
  assert c.roar.thresholds == (0.1, 0.3, 0.5, 0.7, 0.9)
  assert c.roar.num_seeds == 5
  # The ImageNet mean in pixel units, the original code's fill.
  assert c.roar.fill_value == pytest.approx((123.675, 116.28, 103.53))


@pytest.mark.parametrize("field,value,message", [
    ("explain.estimators", ("gradient", "grad_cam2"), "grad_cam2"),
    ("roar.thresholds", (0.1, 1.5), "1.5"),
    ("roar.modes", ("roar", "keep"), "keep"),
    ("roar.fill", "zeros", "config.roar.fill"),
    ("roar.unit", "gradient/roar/half/0", "config.roar.unit"),
    ("explain.estimators", ("oracle",), "oracle"),
    ("explain.estimators", ("random", "gradient", "random"),
     r"\['random'\] named more than once"),
    ("explain.shard_size", 1000, r"config.explain.shard_size=1000 must be a "
     r"positive multiple of the per-process explain batch \(128\)"),
])
def test_bad_benchmark_fields_are_named(field, value, message):
  config = load_config("cifar10")
  section, key = field.split(".")
  with config.unlocked():
    config[section][key] = value
  with pytest.raises(validate.ConfigError, match=message):
    validate.validate(config, "roar")


def test_synthetic_linear_runs_only_as_roar():
  config = load_config("synthetic_linear")
  validate.validate(config, "roar")
  with pytest.raises(validate.ConfigError, match="--mode=roar"):
    validate.validate(config, "train")


def test_paper_grid_explains_in_432_gradient_passes():
  """The paper configs' explain stage, counted as `--mode=explain` counts it."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from roar_jax import models, saliency  # pylint: disable=g-import-not-at-top
  from roar_jax.benchmark.roar import explain  # pylint: disable=g-import-not-at-top
  c = load_config("imagenet_resnet50")
  # The count depends on the estimators and options, not on the network:
  # a small CNN on 8x8 images stands in for ResNet-50 at 224.
  module = models.SmallCNN(4)
  model = saliency.explainable(module, module.init(
      jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
  options = {**explain.explain_options(c), "baseline": 0.0}
  # The squared rows (`sq.*`) rank maps the grid computes anyway.
  maps = tuple(dict.fromkeys(estimator_names.maps_method(e)
                             for e in c.explain.estimators))
  methods = [e for e in maps if e not in ("random", "sobel")]
  shared = saliency.gradient_passes(model, maps, (8, 8, 3), **options)
  alone = sum(saliency.gradient_passes(model, (e,), (8, 8, 3), **options)
              for e in methods)
  assert (len(methods), shared, alone) == (12, 432, 1242)


# Table 2's row names -> the estimator of the grid that computes that row,
# and how the paper ranked it (supplement 6.4: the base rows signed).
_TABLE2_ROWS = {
    "Random": ("random", "abs"), "GRAD": ("gradient", "signed"),
    "IG": ("integrated_gradients", "signed"),
    "GB": ("guided_backprop", "signed"),
    "SG-GRAD": ("sg.gradient", "signed"),
    "SG-IG": ("sg.integrated_gradients", "signed"),
    "SG-GB": ("sg.guided_backprop", "signed"),
    "SG-SQ-GRAD": ("sg_sq.gradient", "abs"),
    "SG-SQ-IG": ("sg_sq.integrated_gradients", "abs"),
    "SG-SQ-GB": ("sg_sq.guided_backprop", "abs"),
    "VAR-GRAD": ("var.gradient", "abs"), "VAR-IG": ("var.integrated_gradients",
                                                     "abs"),
    "VAR-GB": ("var.guided_backprop", "abs"),
}


@pytest.mark.parametrize("name", ["imagenet_resnet50", "food101_resnet50",
                                  "birdsnap_resnet50"])
def test_paper_configs_rank_table2_rows_as_the_paper_did(name):
  c = load_config(name)
  doc = open(f"{REPO}/configs/{name}.py").read().split('"""')[1]
  promised = re.findall(r"^  ([A-Z][A-Za-z-]+)\s+\d", doc, re.M)
  assert {"Random", "GRAD", "IG", "SG-SQ-GRAD", "VAR-GRAD"} <= set(promised)
  for row in promised:
    estimator, transform = _TABLE2_ROWS[row]
    assert estimator in c.explain.estimators, row
    assert estimator_names.transform_for(c.explain, estimator) == transform, row
  for squared in ("sq.gradient", "sq.integrated_gradients",
                  "sq.guided_backprop"):
    assert estimator_names.transform_for(c.explain, squared) == "square"
    assert estimator_names.maps_method(squared) == squared[3:]


@pytest.mark.parametrize("name", ["cifar10", "imagenet_resnet50",
                                  "food101_resnet50", "birdsnap_resnet50"])
def test_table2_estimators_of_a_grid_rank_as_the_paper_did(name):
  """Every Table 2 estimator a config's grid holds is ranked as the paper
  ranked that row: the base methods and SG signed, SG-SQ, VAR and the
  controls by magnitude."""
  c = load_config(name)
  assert set(config_lib.PAPER_ESTIMATORS) <= set(c.explain.estimators)
  ranked = {e: estimator_names.transform_for(c.explain, e)
            for e in config_lib.PAPER_ESTIMATORS}
  for row, (estimator, transform) in _TABLE2_ROWS.items():
    assert ranked[estimator] == transform, (name, row)
  assert {e for e, t in ranked.items() if t == "signed"} == set(
      config_lib.PAPER_SIGNED)


def test_config_errors_come_before_tensorflow_is_imported():
  """A typo in a field fails in about a second: the entry point and the
  validation import no TensorFlow (it takes seconds to load)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  out = subprocess.run(
      [sys.executable, "-c",
       "import sys, roar_jax.main, roar_jax.config.validation, roar_jax.data;"
       "print(sorted(m for m in ('tensorflow', 'tensorflow_datasets.core')"
       " if m in sys.modules))"],
      capture_output=True, text=True, timeout=120, cwd=REPO, check=True)
  assert out.stdout.strip() == "[]"


def test_cifar10_small_study_runs_the_grid_it_states():
  """The paper's estimators that matter, both modes at 50 and 90%, both
  fills, 3 seeds: 264 retrains; the base rows ranked signed, as Table 2's."""
  from roar_jax.benchmark.roar import grid  # pylint: disable=g-import-not-at-top
  c = load_config("cifar10_small_study")
  assert len(grid.all_units(c)) == 11 * 2 * 2 * 2 * 3
  assert set(c.roar.fill) == {"channel_mean", "noisy_linear"}
  assert c.roar.thresholds == (0.5, 0.9) and c.roar.num_seeds == 3
  base = ("gradient", "guided_backprop", "integrated_gradients")
  assert {e for e in c.explain.estimators if "." not in e} == {
      "random", "sobel", *base}
  assert {estimator_names.transform_for(c.explain, e)
          for e in base} == {"signed"}


def test_studies_on_the_fast_recipe_run_the_grids_they_state():
  """The CIFAR-10 study: 5 estimators x ROAR 90% x 2 fills x 3 seeds; the
  Fashion-MNIST study: 8 x 2 modes x 2 thresholds x 2 fills x 3 seeds; both
  retrain with their base model's recipe (the fast CNN) on the full data."""
  from roar_jax.benchmark.roar import grid  # pylint: disable=g-import-not-at-top
  cifar = load_config("cifar10_study")
  fast = load_config("cifar10_fast")
  assert len(grid.all_units(cifar)) == 30
  assert cifar.train.to_dict() == {**fast.train.to_dict(), "log_every": 100}
  assert cifar.model.to_dict() == fast.model.to_dict()
  assert (cifar.data.num_train, cifar.data.num_test) == (None, None)
  assert estimator_names.transform_for(cifar.explain, "gradient") == "signed"
  fmnist = load_config("fashion_mnist_study")
  assert len(grid.all_units(fmnist)) == 192
  assert fmnist.model.name == "fast_cnn" and fmnist.data.num_train is None
  assert {estimator_names.transform_for(fmnist.explain, e) for e in (
      "gradient", "integrated_gradients", "guided_backprop")} == {"signed"}


def test_unknown_field_in_a_config_file_is_refused_with_the_closest():
  config = load_config("toy")
  with config.unlocked():
    config.train.num_stepz = 5  # As `c.train.num_stepz = 5` in a file.
  with pytest.raises(validate.ConfigError, match=re.escape(
      "config.train.num_stepz: the config has no such field (set in the "
      "config file?); did you mean train.num_steps?")):
    validate.validate(config, "train")
  config = load_config("toy")
  with config.unlocked():
    config.explain.methods.occlusion_windw = 4
  with pytest.raises(validate.ConfigError, match=re.escape(
      "did you mean explain.methods.occlusion_window?")):
    validate.validate(config, "roar")
  # Sections users fill stay open: a dataset's and a model's options, the
  # Ray tasks' environment and resources, a stage's own section.
  config = load_config("toy")
  with config.unlocked():
    config.data.toy.num_shapes = 3
    config.model.small_cnn.depth = 2
    config.grid.ray_env_vars.XLA_FLAGS = "--xla_dump_to=/tmp"
    config.grid.ray_resources.TPU = 4
  known_fields.check(config)
  for name in ("cifar10", "fashion_mnist_sanity", "synthetic_linear",
               "birdsnap_resnet50"):
    known_fields.check(config_lib.load(name))


def _run_cli(*args, timeout=120):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  return subprocess.run([sys.executable, *args], capture_output=True,
                        text=True, timeout=timeout, cwd=REPO)


def test_config_file_typo_stops_the_command_line_in_one_line(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text(
      "from roar_jax.config import defaults\n\n"
      "def get_config():\n"
      "  c = defaults.base_config()\n"
      "  c.train.num_stepz = 5\n"
      "  return c\n")
  out = _run_cli("-m", "roar_jax.main", f"--config={bad}",
                 f"--workdir={tmp_path / 'w'}", "--mode=train")
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1] == (
      "config error: config.train.num_stepz: the config has no such field "
      "(set in the config file?); did you mean train.num_steps?")
  assert not (tmp_path / "w" / "base").exists()


def test_a_repeated_flag_takes_the_last_value():
  code = ("import sys; from roar_jax import main; main._parse_flags(sys.argv);"
          "c = main._CONFIG.value;"
          "print(c.roar.thresholds, c.train.num_steps, c.explain.estimators)")
  out = _run_cli(
      "-c", code, "--config=configs/toy.py", "--workdir=/unused",
      "--config.roar.thresholds=0.1,0.2", "--config.roar.thresholds=0.5",
      "--config.train.num_steps=3", "--config.train.num_steps", "7",
      "--config.explain.estimators", "gradient",
      "--config.explain.estimators=('random', 'sobel')")
  assert out.returncode == 0, out.stderr
  assert out.stdout.split("\n")[-2] == "(0.5,) 7 ('random', 'sobel')"
  assert ("warning: --config.roar.thresholds is given more than once; the "
          "last value wins (--config.roar.thresholds=0.5 replaces "
          "--config.roar.thresholds=0.1,0.2)") in out.stderr


@pytest.mark.parametrize("name,fields,message", [
    ("toy", {"explain.methods.occlusion_window": 64},
     "config.explain.methods.occlusion_window=64 is larger than the images "
     "(config.data.image_size=32)"),
    ("toy", {"explain.methods.lime_samples": 0},
     "config.explain.methods.lime_samples=0 must be a positive integer"),
    ("toy", {"explain.methods.shap_samples": 0},
     "config.explain.methods.shap_samples=0 must be a positive integer"),
    ("toy", {"explain.methods.xrai_steps": 0},
     "config.explain.methods.xrai_steps=0 must be a positive integer"),
    ("toy", {"roar.fill_value": (128.0, 128.0)},
     "config.roar.fill_value has 2 values for images with 3 channels"),
    ("toy", {"roar.fill_value": (0.5, 0.5, 300.0)},
     "config.roar.fill_value=(0.5, 0.5, 300.0) must hold pixel values in "
     "[0, 255]"),
    ("fashion_mnist", {"data.mean": (0.5, 0.5, 0.5)},
     "config.data.mean has 3 values for fashion_mnist's images with 1 "
     "channel"),
    ("toy", {"roar.unit": "sobel/roar/0.5/0"},
     "config.roar.unit='sobel/roar/0.5/0': estimator 'sobel' is not in the "
     "grid (config.explain.estimators=['gradient', 'oracle', 'random'])"),
    ("toy", {"roar.unit": "gradient/kar/0.5/0", "roar.modes": ("roar",)},
     "config.roar.unit='gradient/kar/0.5/0': mode 'kar' is not in the grid "
     "(config.roar.modes=['roar'])"),
    ("toy", {"roar.unit": "gradient/roar/0.3/0"},
     "threshold 0.3 is not in the grid (config.roar.thresholds=[0.5, 0.9])"),
    ("toy", {"roar.unit": "gradient/roar/0.5/5"},
     "seed 5 is not in the grid (config.roar.num_seeds=5)"),
])
def test_late_failures_are_start_up_errors(name, fields, message):
  """Each of these failed after training, in a traceback; now at start-up,
  in one line naming the field."""
  config = load_config(name)
  with config.unlocked():
    for field, value in fields.items():
      *sections, key = field.split(".")
      node = config
      for section in sections:
        node = node[section]
      node[key] = value
  with pytest.raises(validate.ConfigError) as error:
    validate.validate(config, "roar")
  assert message in str(error.value)
  assert "\n" not in str(error.value)
