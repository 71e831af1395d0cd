"""The sanity checks' settings: tests, seeds, validation, and their wording.

Everything here reads `config.sanity` (and the trainer's fields) and does no
work: what the tests are, where every random choice comes from, the checks
run at start-up, and the settings every record and figure states.
"""

import copy
import dataclasses
from typing import Any

from roar_jax import models
from roar_jax.benchmark.roar import explain as explain_stage
from roar_jax.benchmark.sanity import randomization
from roar_jax.benchmark.sanity import repaired
from roar_jax.benchmark.sanity import similarity
from roar_jax.saliency import explaining as saliency_api
from roar_jax.saliency import registry as saliency_registry

# The paper's three, then the repaired ones (`repaired.py`; opt-in: the
# configs name the paper's three).
TESTS = ("cascading", "independent", "data", "bottom_up", "emprt", "smprt",
         "random_logit")
TARGETS = ("predicted", "label")
# Model-free maps put through every test beside the estimators (Binder et
# al. 2023): their similarity to the trained model's maps is what a metric
# gives a map that knows nothing of the model.
CONTROLS = ("random", "sobel")

# Streams of randomness, all derived from config.seed.
IMAGES_STREAM, LABELS_STREAM, REINIT_STREAM = 0, 1, 2
NOISE_STREAM, FLOOR_STREAM = 3, 4
SMOOTH_STREAM, LOGIT_STREAM = 5, 6


def seeds(config) -> dict[str, str]:
  """Where every random choice comes from (quoted by the report)."""
  s = int(config.seed)
  return {
      "config.seed": str(s),
      "training (init, shuffling)": f"config.seed = {s} (the trainer's)",
      "test images": f"numpy default_rng([{s}, {IMAGES_STREAM}])",
      "label permutation": f"numpy default_rng([{s}, {LABELS_STREAM}])",
      "re-initialization": (f"fold_in(fold_in(key({s}), {REINIT_STREAM}), "
                            "layer index)"),
      "SmoothGrad/VarGrad noise and the random control": (
          f"fold_in(key({s}), {NOISE_STREAM}), the same for every model "
          "compared"),
      "floor maps": (f"numpy default_rng([{s}, {FLOOR_STREAM}, "
                     "crc32(estimator name)])"),
      "sMPRT noise": (f"numpy default_rng([{s}, {SMOOTH_STREAM}, test "
                      "index]), the same for every model compared"),
      "random-logit classes": (f"numpy default_rng([{s}, {LOGIT_STREAM}, "
                               "test index])"),
  }


def controls(config) -> tuple[str, ...]:
  """The controls of `config.sanity.controls` (default: random and sobel)."""
  return tuple(config.sanity.get("controls", CONTROLS) or ())


def estimators(config) -> tuple[str, ...]:
  """The configured estimators, controls left out (they run as controls)."""
  return tuple(e for e in config.sanity.estimators if e not in controls(config))


def _require(ok: bool, message: str):
  if not ok:
    raise ValueError(message)


def validate_config(config, num_classes: int | None = None):
  """Checks `config.sanity`; raises ValueError naming the bad field."""
  sc = config.get("sanity")
  _require(sc is not None, "config.sanity is missing: --mode=sanity needs a "
           "sanity-check config (e.g. configs/fashion_mnist_sanity.py)")
  _require(bool(sc.models), "config.sanity.models is empty")
  for name in sc.models:
    _require(name in models.MODELS, f"config.sanity.models: unknown model "
             f"{name!r}; known: {sorted(models.MODELS)}")
  known = set(saliency_api.available_methods())
  _require(bool(estimators(config)), "config.sanity.estimators is empty")
  for est in sc.estimators:
    _require(est in known, f"config.sanity.estimators: unknown estimator "
             f"{est!r}; known: {sorted(known)}")
  for control in controls(config):
    _require(control in known and saliency_registry.parse(control)[1]
             .model_free, f"config.sanity.controls: {control!r} is not a "
             "model-free method (random, sobel)")
  for test in sc.tests:
    _require(test in TESTS, f"config.sanity.tests: unknown test {test!r}; "
             f"known: {list(TESTS)}")
  _require(sc.target in TARGETS, f"config.sanity.target={sc.target!r}: "
           f"expected one of {list(TARGETS)}")
  _require(sc.init in randomization.INITS, f"config.sanity.init={sc.init!r}:"
           f" expected one of {list(randomization.INITS)}")
  _require(isinstance(sc.num_images, int) and sc.num_images > 0,
           f"config.sanity.num_images={sc.num_images} must be a positive "
           "integer")
  _require(0.0 <= sc.min_train_accuracy <= 1.0,
           f"config.sanity.min_train_accuracy={sc.min_train_accuracy} must "
           "lie in [0, 1]")
  rl = sc.random_labels
  _require(0 < rl.num_steps <= rl.max_steps, "config.sanity.random_labels: "
           f"need 0 < num_steps ({rl.num_steps}) <= max_steps "
           f"({rl.max_steps})")
  _require(isinstance(rl.num_train, int) and rl.num_train >= 0,
           f"config.sanity.random_labels.num_train={rl.num_train} must be an "
           "integer >= 0 (0: the whole training split)")
  similarity.SimilarityOptions.from_config(sc.get("similarity"))
  repaired.RepairedOptions.from_config(sc.get("repaired"))
  _require("random_logit" not in sc.tests or num_classes is None
           or num_classes >= 2, "config.sanity.tests: random_logit needs at "
           "least 2 classes")
  if num_classes is not None:
    for name in sc.models:
      models.get_model(model_config(config, name).model, num_classes)


def model_config(config, name: str, **train_overrides):
  """A copy of `config` that trains model `name`."""
  cfg = copy.deepcopy(config)
  cfg.model.name = name
  for k, v in train_overrides.items():
    if v is not None:
      cfg.train[k] = v
  return cfg


def estimator_options(config) -> dict[str, Any]:
  """Options of `config.explain` (IG's baseline is passed separately)."""
  return explain_stage.explain_options(config)


black_image = explain_stage.black_image

INIT_ORIGINAL = (
    "the layer's own initializers (as at the start of training), re-run; a "
    "BatchNorm scale initialized to zero (the last BatchNorm of a ResNet "
    "block) is set to one, the standard BatchNorm scale, so that a randomized "
    "block is random rather than the identity")


def meta(config, model_name, *, has_bn, skipped, accuracy) -> dict[str, Any]:
  """The settings every record states (re-init, BatchNorm, class, seeds)."""
  sc = config.sanity
  init = (INIT_ORIGINAL if sc.init == "original" else
          f"truncated normal, mean 0, std {sc.init_std}, cut at 2 std")
  if not has_bn:
    bn = "no BatchNorm in this model"
  else:
    bn = ("reset to mean 0, variance 1" if sc.reset_batch_stats else
          "kept trained")
  target = ("the class predicted by the model being explained"
            if sc.target == "predicted" else "the true label")
  return {"model": model_name, "init": sc.init, "init_description": init,
          "init_std": sc.init_std, "reset_batch_stats": bool(
              sc.reset_batch_stats), "batch_norm": bn, "target": sc.target,
          "target_description": target, "seed": int(config.seed),
          "seeds": seeds(config), "num_images": int(sc.num_images),
          "controls": list(controls(config)),
          "skipped_estimators": skipped, "trained_test_accuracy": accuracy,
          "similarity": dataclasses.asdict(similarity.SimilarityOptions
                                           .from_config(sc.get("similarity"))),
          "repaired": dataclasses.asdict(repaired_options(config))}


def repaired_options(config) -> repaired.RepairedOptions:
  """`config.sanity.repaired` (Quantus's defaults where unset)."""
  return repaired.RepairedOptions.from_config(config.sanity.get("repaired"))
