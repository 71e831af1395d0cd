"""What the sanity checks store, and the fingerprint each artifact carries.

Under `W/sanity/<model>/` (`workdir.Workdir.sanity`):

  true_labels/                 the true-label model (a training workdir)
  random_labels_<N>/           the random-label model (first N images)
  reference/<estimator>/       the true-label model's maps (maps.npz)
  <test>/<estimator>/          one test's result for one estimator:
                               record.json (rows, written last) and the
                               maps of the map grids (maps.npz)

Every folder holds a provenance.json (`provenance.Artifact.write`), written
before the folder is filled. Fingerprints chain:

- a model: the data fields (with the content of `data.path`) and the
  training fields of ROAR's base model (`benchmark.roar.artifacts`), the
  options of other models left out; the random-label model adds its label
  permutation and `random_labels.num_train`/`num_steps` (not `max_steps` or
  `min_train_accuracy`: raising them continues its training);
- reference maps: the estimator, its options, the seed, the test images
  (`num_images`) and the class explained; input: the true-label model;
- a test's record: its reference maps' fields, the test's own settings
  (re-initialization, BatchNorm, similarity options, controls, the accuracy
  floor of the data test, the options of a repaired test in
  `config.sanity.repaired`); inputs: the reference maps (and the
  random-label model).

An estimator added to the config adds artifacts and reuses the others; a
changed field that an existing artifact depends on stops the run before any
work, naming the field (`provenance.settle`).
"""

import dataclasses
from typing import Any, Iterable

from roar_jax import models as models_registry
from roar_jax import provenance as provenance_lib
from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import artifacts as roar_artifacts
from roar_jax.benchmark.sanity import models as models_lib
from roar_jax.benchmark.sanity import settings
from roar_jax.provenance import Artifact

RECORD_FILE = "record.json"
MAPS_FILE = "maps.npz"
RANDOMIZATION_TESTS = ("cascading", "independent", "bottom_up", "emprt",
                       "smprt")
# The fields of `config.sanity.repaired` each repaired test reads.
REPAIRED_FIELDS = {"emprt": ("emprt_n_bins",),
                   "smprt": ("smprt_nr_samples", "smprt_noise_magnitude"),
                   "random_logit": ("ssim_window",)}


@dataclasses.dataclass
class ModelPlan:
  """The artifacts of one model's sanity checks."""
  name: str
  config: Any  # The experiment config with model.name = name.
  folder: str
  true_model: Artifact
  random_model: Artifact | None
  estimators: tuple[str, ...]  # Those the model supports.
  skipped: dict[str, str]  # Estimators it does not support, and why.
  reference: dict[str, Artifact]
  records: dict[tuple[str, str], Artifact]  # (test, estimator) -> folder.

  def all(self) -> Iterable[Artifact]:
    yield self.true_model
    if self.random_model is not None:
      yield self.random_model
    yield from self.reference.values()
    yield from self.records.values()

  def pending(self, test: str) -> tuple[str, ...]:
    """The estimators whose `test` record is not written yet."""
    return tuple(e for e in self.estimators
                 if not workdir_lib.exists(record_file(
                     self.records[(test, e)])))


@dataclasses.dataclass
class Plan:
  workdir: workdir_lib.Workdir
  models: list[ModelPlan]

  def all(self) -> Iterable[Artifact]:
    for m in self.models:
      yield from m.all()


def record_file(artifact: Artifact) -> str:
  return workdir_lib.join(artifact.path, RECORD_FILE)


def maps_file(artifact: Artifact) -> str:
  return workdir_lib.join(artifact.path, MAPS_FILE)


def _artifact(kind, path, fields, inputs=None) -> Artifact:
  return Artifact(kind, path, provenance_lib.provenance(fields, inputs))


def _training(config) -> dict[str, Any]:
  """ROAR's training fields, without the options of the other models."""
  others = tuple(f"model.{m}." for m in models_registry.MODELS
                 if m != config.model.name)
  return {k: v for k, v in roar_artifacts.training_fields(config).items()
          if not k.startswith(others)}


def _random_model_fields(config) -> dict[str, Any]:
  rcfg = models_lib.random_label_config(config)
  rl = config.sanity.random_labels
  fields = {k: v for k, v in _training(rcfg).items()
            if k != "train.num_steps"}
  fields.update({"sanity.random_labels.num_train": rl.num_train,
                 "sanity.random_labels.num_steps": rl.num_steps,
                 "label_permutation": f"default_rng([seed, "
                                      f"{settings.LABELS_STREAM}])"})
  return fields


def _reference_fields(config, estimator: str) -> dict[str, Any]:
  sc = config.sanity
  fields = {"estimator": estimator, "seed": config.seed,
            "sanity.num_images": sc.num_images, "sanity.target": sc.target}
  fields.update({f"explain.{k}": v for k, v in
                 settings.estimator_options(config).items()
                 if k != "chunk_size"})
  return fields


def _record_fields(config, test: str, estimator: str) -> dict[str, Any]:
  sc = config.sanity
  fields = {**_reference_fields(config, estimator), "test": test,
            "sanity.controls": list(settings.controls(config)),
            "sanity.num_visualize": sc.num_visualize}
  sim = sc.get("similarity")
  sim = sim.to_dict() if sim is not None else {}
  fields.update({f"sanity.similarity.{k}": v for k, v in
                 provenance_lib.flatten(sim).items()})
  if test in RANDOMIZATION_TESTS:
    fields.update({"sanity.init": sc.init, "sanity.init_std": sc.init_std,
                   "sanity.reset_batch_stats": sc.reset_batch_stats})
  options = settings.repaired_options(config)
  fields.update({f"sanity.repaired.{k}": getattr(options, k)
                 for k in REPAIRED_FIELDS.get(test, ())})
  if test == "data":
    fields.update({"sanity.min_train_accuracy": sc.min_train_accuracy,
                   "sanity.random_labels.max_steps":
                       sc.random_labels.max_steps})
  return fields


def model_plan(config, wd: workdir_lib.Workdir, name: str, source, data,
               supported) -> ModelPlan:
  """The artifacts of model `name`.

  Args:
    config: the experiment config.
    wd: the workdir.
    name: one of `config.sanity.models`.
    source: the data Source (its training split's size names the
      random-label model's folder).
    data: `roar_artifacts.data_fields(config.data)`.
    supported: (estimators the model supports, {skipped: why}).
  """
  cfg = settings.model_config(config, name)
  folder = wd.sanity(name)
  true_model = _artifact("sanity true-label model",
                         workdir_lib.join(folder, "true_labels"),
                         {**data, **_training(cfg)})
  random_model = None
  if "data" in config.sanity.tests:
    n = models_lib.num_random_label_images(config, source)
    random_model = _artifact(
        "sanity random-label model",
        workdir_lib.join(folder, f"random_labels_{n}"),
        {**data, **_random_model_fields(cfg)})
  estimators, skipped = supported
  reference, records = {}, {}
  for est in estimators:
    reference[est] = _artifact(
        "sanity reference maps", workdir_lib.join(folder, "reference", est),
        _reference_fields(cfg, est), {"model": true_model.fingerprint})
    for test in config.sanity.tests:
      inputs = {"reference": reference[est].fingerprint}
      if test == "data":
        inputs["random_model"] = random_model.fingerprint
      records[(test, est)] = _artifact(
          "sanity test record", workdir_lib.join(folder, test, est),
          _record_fields(cfg, test, est), inputs)
  return ModelPlan(name, cfg, folder, true_model, random_model, estimators,
                   skipped, reference, records)


def plan(config, wd: workdir_lib.Workdir, source, supported_fn) -> Plan:
  """Every artifact of the config's sanity checks.

  Args:
    config: the experiment config.
    wd: the workdir.
    source: the data Source.
    supported_fn: model config -> (supported estimators, {skipped: why}).
  """
  data = roar_artifacts.data_fields(config.data)
  return Plan(wd, [
      model_plan(config, wd, name, source, data,
                 supported_fn(settings.model_config(config, name)))
      for name in config.sanity.models])
