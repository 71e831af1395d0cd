"""Every config loads and validates; the paper configs carry the paper's grid."""

import pytest

from conftest import load_config
from roar_jax.config import defaults as config_lib
from roar_jax.config import validation as validate

CONFIGS = ("toy", "cifar10", "fashion_mnist", "imagenet_resnet50",
           "food101_resnet50", "birdsnap_resnet50", "fashion_mnist_sanity")


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
  assert c.explain.estimators == config_lib.PAPER_ESTIMATORS
  assert len(c.explain.estimators) == 14
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
  methods = [e for e in c.explain.estimators if e not in ("random", "sobel")]
  shared = saliency.gradient_passes(model, c.explain.estimators, (8, 8, 3),
                                    **options)
  alone = sum(saliency.gradient_passes(model, (e,), (8, 8, 3), **options)
              for e in methods)
  assert (len(methods), shared, alone) == (12, 432, 1242)
