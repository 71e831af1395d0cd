"""`--mode=sanity`: the sanity checks of Adebayo et al. (2018), end to end.

For every model of `config.sanity.models`:

1. train it on the true labels (`<workdir>/<model>/true_labels`, resumed like
   any training run);
2. explain the same N test images (`config.sanity.num_images`, drawn once from
   the seed) with every configured estimator: the reference maps;
3. cascading randomization: re-initialize the layers from the logits down,
   cumulatively, and compare each step's maps with the reference maps;
4. independent randomization: re-initialize one layer at a time, the others
   trained, and compare likewise;
5. data randomization: train the same architecture on permuted training
   labels (`<workdir>/<model>/random_labels_<N>`) until its training accuracy
   reaches `config.sanity.min_train_accuracy` (doubling the steps up to
   `config.sanity.random_labels.max_steps`); if it does, compare its maps
   with the reference maps, else record the accuracies it reached and refuse
   to compare (a model that has not fitted the random labels says nothing
   about them).

Every comparison reports, per estimator and metric (`similarity.METRICS`), the
mean and std over the N images, and beside it the floor: the same metric
between the reference map and an independent N(0, 1) map.

Choices, stated in every record and in the report:
- re-initialization: `config.sanity.init` ('original': the layer's own
  initializers re-run; 'truncated_normal': std `init_std`), layer i drawing
  from `fold_in(fold_in(key(seed), 2), i)` (randomization.py);
- BatchNorm statistics reset or kept (`config.sanity.reset_batch_stats`);
- the class explained: 'predicted', the top class of the model being explained
  (the released code's choice: after randomization it is the random model's
  own top class), or 'label', the true label;
- the SmoothGrad/VarGrad noise is the same for every model compared (one key
  for all, per image index), so the noise itself does not lower similarity;
- the seeds of every random choice (`seeds`).

Files: `<workdir>/sanity/<model>/{reference_maps.npz, cascading.json,
independent.json, data.json, *_maps.npz}`; a record's JSON is its completion
marker (written last, atomically) and carries a fingerprint of the settings
it depends on, so a rerun skips finished parts and redoes changed ones. The
report goes to `<workdir>/report/` (sanity_report.py).
"""

import copy
import dataclasses
import functools
import hashlib
import json
import os
import time
import zlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from absl import logging

from roar_jax import models
from roar_jax import training
from roar_jax.benchmark.roar import explain as explain_stage
from roar_jax.benchmark.sanity import randomization
from roar_jax.benchmark.sanity import report as sanity_report
from roar_jax.benchmark.sanity import similarity
from roar_jax.data import pipeline
from roar_jax.data import source_protocol as source_lib
from roar_jax.data import sources
from roar_jax.saliency import explainable
from roar_jax.saliency import explaining as saliency_api
from roar_jax.saliency import model as saliency_model
from roar_jax.saliency import registry as saliency_registry

TESTS = ("cascading", "independent", "data")
TARGETS = ("predicted", "label")

# Streams of randomness, all derived from config.seed.
_IMAGES_STREAM, _LABELS_STREAM, _REINIT_STREAM = 0, 1, 2
_NOISE_STREAM, _FLOOR_STREAM = 3, 4


def seeds(config) -> dict[str, str]:
  """Where every random choice comes from (quoted by the report)."""
  s = int(config.seed)
  return {
      "config.seed": str(s),
      "training (init, shuffling)": f"config.seed = {s} (the trainer's)",
      "test images": f"numpy default_rng([{s}, {_IMAGES_STREAM}])",
      "label permutation": f"numpy default_rng([{s}, {_LABELS_STREAM}])",
      "re-initialization": (f"fold_in(fold_in(key({s}), {_REINIT_STREAM}), "
                            "layer index)"),
      "SmoothGrad/VarGrad noise": (f"fold_in(key({s}), {_NOISE_STREAM}), the "
                                   "same for every model compared"),
      "floor maps": (f"numpy default_rng([{s}, {_FLOOR_STREAM}, "
                     "crc32(estimator name)])"),
  }


def validate_config(config, num_classes: int | None = None):
  """Checks `config.sanity`; raises ValueError naming the bad field."""
  sc = config.get("sanity")
  if sc is None:
    raise ValueError("config.sanity is missing: --mode=sanity needs a "
                     "sanity-check config (e.g. "
                     "configs/fashion_mnist_sanity.py)")
  if not sc.models:
    raise ValueError("config.sanity.models is empty")
  for name in sc.models:
    if name not in models.MODELS:
      raise ValueError(f"config.sanity.models: unknown model {name!r}; "
                       f"known: {sorted(models.MODELS)}")
  known = set(saliency_api.available_methods())
  if not sc.estimators:
    raise ValueError("config.sanity.estimators is empty")
  for est in sc.estimators:
    if est not in known:
      raise ValueError(f"config.sanity.estimators: unknown estimator {est!r};"
                       f" known: {sorted(known)}")
  for test in sc.tests:
    if test not in TESTS:
      raise ValueError(f"config.sanity.tests: unknown test {test!r}; known: "
                       f"{list(TESTS)}")
  if sc.target not in TARGETS:
    raise ValueError(f"config.sanity.target={sc.target!r}: expected one of "
                     f"{list(TARGETS)}")
  if sc.init not in randomization.INITS:
    raise ValueError(f"config.sanity.init={sc.init!r}: expected one of "
                     f"{list(randomization.INITS)}")
  if not (isinstance(sc.num_images, int) and sc.num_images > 0):
    raise ValueError(f"config.sanity.num_images={sc.num_images} must be a "
                     "positive integer")
  if not 0.0 <= sc.min_train_accuracy <= 1.0:
    raise ValueError(f"config.sanity.min_train_accuracy="
                     f"{sc.min_train_accuracy} must lie in [0, 1]")
  rl = sc.random_labels
  if rl.num_steps <= 0 or rl.max_steps < rl.num_steps:
    raise ValueError(f"config.sanity.random_labels: need 0 < num_steps "
                     f"({rl.num_steps}) <= max_steps ({rl.max_steps})")
  if not (isinstance(rl.num_train, int) and rl.num_train >= 0):
    raise ValueError(f"config.sanity.random_labels.num_train={rl.num_train} "
                     "must be an integer >= 0 (0: the whole training split)")
  similarity.SimilarityOptions.from_config(sc.get("similarity"))
  if num_classes is not None:
    for name in sc.models:
      models.get_model(_model_config(config, name).model, num_classes)


def _model_config(config, name: str, **train_overrides):
  """A copy of `config` that trains model `name`."""
  cfg = copy.deepcopy(config)
  cfg.model.name = name
  for k, v in train_overrides.items():
    if v is not None:
      cfg.train[k] = v
  return cfg


def _fingerprint(obj) -> str:
  blob = json.dumps(obj, sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _as_dict(cfg) -> Any:
  return cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else cfg


def _write_json(path: str, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True, allow_nan=True)
  os.replace(tmp, path)


def _write_npz(path: str, arrays: dict[str, np.ndarray]):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    np.savez(f, **arrays)
  os.replace(tmp, path)


def _read_json(path: str) -> dict[str, Any] | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


# ---------------------------------------------------------------------------
# Data.


def _split_arrays(source, split: str) -> tuple[np.ndarray, np.ndarray]:
  """A whole split as uint8 images and int64 labels, in index order."""
  if hasattr(source, "arrays"):
    images, labels = source.arrays(split)
    return np.asarray(images), np.asarray(labels, np.int64)
  images, labels = [], []
  for batch in source.load(split).batch(4096).as_numpy_iterator():
    images.append(batch["image"])
    labels.append(batch["label"])
  return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def sample_test_images(config, source) -> dict[str, np.ndarray]:
  """The N test images every comparison uses, preprocessed like the trainer's.

  Args:
    config: the experiment config.
    source: the data Source.

  Returns:
    {'image': float32 [N, S, S, C] (normalized), 'label': int32 [N],
     'index': int64 [N] (positions in the test split, ascending)}.
  """
  sc = config.sanity
  batches = pipeline.eval_iterator(
      source, config.data, "test",
      global_batch_size=config.train.eval_batch_size)
  images, labels, index = [], [], []
  for batch in batches:
    real = batch["mask"] > 0
    images.append(batch["image"][real])
    labels.append(batch["label"][real])
    index.append(batch["index"][real])
  images, labels, index = (np.concatenate(images), np.concatenate(labels),
                           np.concatenate(index))
  if sc.num_images > len(images):
    raise ValueError(f"config.sanity.num_images={sc.num_images} exceeds the "
                     f"{len(images)} test images")
  rng = np.random.default_rng([int(config.seed), _IMAGES_STREAM])
  pick = np.sort(rng.choice(len(images), sc.num_images, replace=False))
  order = np.argsort(index[pick], kind="stable")
  pick = pick[order]
  return {"image": images[pick].astype(np.float32),
          "label": labels[pick].astype(np.int32), "index": index[pick]}


def foreground(config, images: np.ndarray) -> np.ndarray:
  """Positions whose input differs from the black image (IG's baseline).

  Args:
    config: the experiment config (`data.mean`, `data.std`: the black pixel
      maps to -mean/std in the model's input space).
    images: normalized images [N, H, W, C].

  Returns:
    bool [N, H, W].
  """
  # Half a grey level, in input units: an 8-bit pixel is black or is not.
  tol = 0.5 / 255.0 / float(np.max(np.asarray(config.data.std)))
  return (np.abs(images - black_image(config)) > tol).any(axis=-1)


def random_label_source(config, source):
  """The training split with permuted labels, and the untouched test split.

  Args:
    config: the experiment config (`sanity.random_labels.num_train`: use the
      first N training images; 0 for all).
    source: the true-label Source.

  Returns:
    An ArraySource whose 'train' labels are one fixed permutation of the true
    labels (every class count kept) and whose 'test' split is the original.
  """
  rl = config.sanity.random_labels
  images, labels = _split_arrays(source, "train")
  if rl.num_train:
    images, labels = images[:rl.num_train], labels[:rl.num_train]
  permuted = randomization.permute_labels(
      labels, [int(config.seed), _LABELS_STREAM])
  test = _split_arrays(source, "test")
  info = source.info
  new_info = source_lib.DatasetInfo(
      name=f"{info.name}-random-labels", num_classes=info.num_classes,
      image_shape=tuple(info.image_shape),
      num_examples={"train": len(images), "test": len(test[0])},
      class_names=info.class_names)
  return source_lib.ArraySource(new_info, {"train": (images, permuted),
                                           "test": test})


# ---------------------------------------------------------------------------
# Training.


def train_true_labels(config, workdir: str, source, mesh=None
                      ) -> dict[str, Any]:
  """Trains (or reuses) the true-label model of `config.model`."""
  done = training.load_metrics(workdir)
  if done is not None and done.get("steps") == config.train.num_steps:
    return done
  return training.train_and_evaluate(config, workdir, source=source,
                                     mesh=mesh)


def load_trained(config, workdir: str, source, mesh=None):
  """(module, variables) of a trained workdir, restored onto `mesh`."""
  return training.load_model(config, workdir, source=source, mesh=mesh)


def random_label_config(config):
  """The training config of the random-label model (steps set per round)."""
  cfg = _model_config(config, config.model.name,
                      learning_rate=config.sanity.random_labels.get(
                          "learning_rate"))
  # Its accuracy on the whole permuted training set, in eval mode, decides
  # whether the labels are fitted (not the running average of train steps).
  cfg.train.eval_train = True
  return cfg


def train_random_labels(config, workdir: str, source, mesh=None
                        ) -> dict[str, Any]:
  """Trains on permuted labels until the training accuracy reaches the floor.

  Starts with `sanity.random_labels.num_steps` and doubles the steps (the
  trainer resumes from its checkpoint) until the accuracy on the whole
  permuted training set, measured in eval mode, reaches
  `sanity.min_train_accuracy` or the steps reach `random_labels.max_steps`.

  Args:
    config: the model's config.
    workdir: the random-label model's training workdir.
    source: the permuted-label Source.
    mesh: the training mesh (default: every device).

  Returns:
    The trainer's metrics of the last run, with 'train_eval_accuracy'.
  """
  sc = config.sanity
  rl = sc.random_labels
  cfg = random_label_config(config)
  steps = int(rl.num_steps)
  done = training.load_metrics(workdir)
  if done is not None and done.get("steps", 0) > steps:
    # An earlier run already doubled: continue from its last round (the
    # trainer cannot go back to fewer steps than its checkpoint holds).
    steps = int(done["steps"])
  while True:
    cfg.train.num_steps = steps
    done = training.load_metrics(workdir)
    if (done is not None and done.get("steps") == steps
        and done.get("train_eval_accuracy") is not None):
      result = done
    else:
      logging.info("random labels: training %s to step %d", workdir, steps)
      result = training.train_and_evaluate(cfg, workdir, source=source,
                                           mesh=mesh)
    acc = result["train_eval_accuracy"]
    logging.info("random labels: training accuracy %.4f after %d steps "
                 "(floor %.2f)", acc, steps, sc.min_train_accuracy)
    if acc >= sc.min_train_accuracy or steps >= rl.max_steps:
      return result
    steps = min(int(rl.max_steps), 2 * steps)


# ---------------------------------------------------------------------------
# Maps and comparisons.


def estimators_for(model: saliency_model.Model, names: Sequence[str]
                   ) -> tuple[tuple[str, ...], dict[str, str]]:
  """The estimators this model supports, and why the others are skipped.

  GradCAM and Guided GradCAM read the model split at its last convolutional
  block (`features`/`head`); the MLP has none, so they are skipped for it
  with a note instead of failing the run.

  Args:
    model: the model as the estimators see it.
    names: the configured estimator names.

  Returns:
    (the names it supports, {skipped name: reason}).
  """
  keep, skipped = [], {}
  for name in names:
    _, est = saliency_registry.parse(name)
    missing = [p for p in est.needs if getattr(model, p) is None]
    if missing:
      skipped[name] = (f"the model has no {'/'.join(missing)}, which {name} "
                       "needs (its split at the last convolutional block)"
                       if "features" in missing else
                       f"the model has no {'/'.join(missing)}, which {name} "
                       "needs")
    else:
      keep.append(name)
  return tuple(keep), skipped


def _estimator_options(config) -> dict[str, Any]:
  """Options of `config.explain` (IG's baseline is passed separately)."""
  return explain_stage.explain_options(config, baseline=False)


black_image = explain_stage.black_image


def explain(config, module, variables, images: dict[str, np.ndarray],
            estimators: Sequence[str]) -> dict[str, np.ndarray]:
  """Maps of `estimators` for the test images, with the configured target.

  The noise key is the same for every call, and the noise of an image depends
  on its test index, so SmoothGrad and VarGrad see identical noise on every
  model compared.
  """
  model = explainable(module, _on_one_device(variables))
  target = None if config.sanity.target == "predicted" else jnp.asarray(
      images["label"])
  key = jax.random.fold_in(jax.random.key(int(config.seed)), _NOISE_STREAM)
  maps = saliency_api.explain_all(
      model, jnp.asarray(images["image"]), methods=tuple(estimators), key=key,
      target=target, indices=jnp.asarray(images["index"].astype(np.int32)),
      baseline=jnp.asarray(black_image(config)),
      **_estimator_options(config))
  return {e: np.asarray(jax.device_get(maps[e]), np.float32)
          for e in estimators}


def _on_one_device(variables):
  """The variables as plain arrays on the default device.

  Trained variables come back replicated over the training mesh, re-
  initialized layers on the default device; a jitted function compiles anew
  for every new mix of placements, so every model explained gets the same
  one and the compiled estimators are reused across randomization steps.
  """
  return jax.tree.map(lambda x: jnp.asarray(np.asarray(jax.device_get(x))),
                      variables)


@functools.lru_cache(maxsize=8)
def _jitted_apply(module):
  return jax.jit(module.apply)


def _predictions(module, variables, images) -> np.ndarray:
  logits = _jitted_apply(module)(_on_one_device(variables),
                                 jnp.asarray(images["image"]))
  return np.asarray(jnp.argmax(logits, axis=-1))


def _compare_rows(config, reference, maps, floor, fg, *, test, model_name,
                  step, step_name, layers, extra) -> list[dict[str, Any]]:
  """One row per (estimator, metric): mean, std, n, and the floor beside it."""
  options = similarity.SimilarityOptions.from_config(
      config.sanity.get("similarity"))
  rows = []
  for est, ref in reference.items():
    values = similarity.compare(ref, maps[est], options=options, foreground=fg)
    for metric, v in values.items():
      s = similarity.summarize(v)
      f = floor[est][metric]
      rows.append({"test": test, "model": model_name, "estimator": est,
                   "step": step, "step_name": step_name,
                   "layers": "+".join(layers), "metric": metric,
                   "mean": s["mean"], "std": s["std"], "n": s["n"],
                   "floor_mean": f["mean"], "floor_std": f["std"], **extra})
  return rows


def _floor(config, reference, fg) -> dict[str, dict[str, dict[str, float]]]:
  """Each metric between the reference maps and independent N(0, 1) maps."""
  options = similarity.SimilarityOptions.from_config(
      config.sanity.get("similarity"))
  out = {}
  for est, ref in reference.items():
    # Seeded by the estimator's name: its floor does not depend on which
    # other estimators run.
    noise = similarity.random_maps(
        ref.shape, [int(config.seed), _FLOOR_STREAM, zlib.crc32(est.encode())])
    values = similarity.compare(ref, noise, options=options, foreground=fg)
    out[est] = {m: similarity.summarize(v) for m, v in values.items()}
  return out


def _visual(images, maps_by_step: dict[str, dict[str, np.ndarray]],
            count: int) -> dict[str, np.ndarray]:
  """The first `count` images and their maps per step, for the map grids."""
  out = {"images": images["image"][:count], "index": images["index"][:count]}
  for step_name, maps in maps_by_step.items():
    for est, m in maps.items():
      out[f"{est}|{step_name}"] = m[:count]
  return out


def _meta(config, model_name, *, has_bn, skipped, accuracy) -> dict[str, Any]:
  """The settings every record states (re-init, BatchNorm, class, seeds)."""
  sc = config.sanity
  init = ("the layer's own initializers (as at the start of training), re-run"
          if sc.init == "original" else
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
          "skipped_estimators": skipped, "trained_test_accuracy": accuracy,
          "similarity": dataclasses.asdict(similarity.SimilarityOptions
                                           .from_config(sc.get("similarity")))}


def _randomization_test(config, test, module, variables, images, reference,
                        floor, fg, meta, workdir_model, input_shape, labels
                        ) -> dict[str, Any]:
  """Cascading or independent randomization: rows for every step."""
  sc = config.sanity
  names = randomization.layer_names(module, variables)
  plan = (randomization.cascading_steps(names) if test == "cascading" else
          randomization.independent_steps(names))
  key = jax.random.fold_in(jax.random.key(int(config.seed)), _REINIT_STREAM)
  trained_pred = _predictions(module, variables, images)
  rows = _compare_rows(
      config, reference, reference, floor, fg, test=test,
      model_name=meta["model"], step=0, step_name="original", layers=(),
      extra={"model_accuracy": float(np.mean(trained_pred == labels)),
             "same_prediction": 1.0})
  visual = {"original": reference}
  bar = tqdm.tqdm(plan, desc=f"{meta['model']} {test}", disable=None,
                  leave=False)
  for step, layers in enumerate(bar, start=1):
    new = randomization.randomize(
        module, variables, layers, key, init=sc.init, input_shape=input_shape,
        init_std=sc.init_std, reset_batch_stats=sc.reset_batch_stats)
    maps = explain(config, module, new, images, tuple(reference))
    pred = _predictions(module, new, images)
    # Cascading steps are named by the layer they add (the paper's x axis),
    # independent steps by their single layer: both are layers[-1].
    rows += _compare_rows(
        config, reference, maps, floor, fg, test=test, model_name=meta["model"],
        step=step, step_name=layers[-1], layers=layers,
        extra={"model_accuracy": float(np.mean(pred == labels)),
               "same_prediction": float(np.mean(pred == trained_pred))})
    visual[layers[-1]] = maps
  _write_npz(os.path.join(workdir_model, f"{test}_maps.npz"),
             _visual(images, visual, sc.num_visualize))
  return {"test": test, "model": meta["model"], "status": "compared",
          "steps": [{"step": 0, "name": "original", "layers": []}] + [
              {"step": i, "name": l[-1], "layers": list(l)}
              for i, l in enumerate(plan, start=1)],
          "rows": rows, "meta": meta}


def _data_test(config, model_cfg, workdir, mdir, model_name, source, images,
               reference, floor, fg, meta, labels, mesh) -> dict[str, Any]:
  """Data randomization: the permuted-label model against the true-label one."""
  sc = config.sanity
  rsource = random_label_source(model_cfg, source)
  # The directory names the training subset: a checkpoint trained on other
  # images must not be resumed.
  num_train = int(rsource.info.num_examples["train"])
  rdir = os.path.join(workdir, model_name, f"random_labels_{num_train}")
  result = train_random_labels(model_cfg, rdir, rsource, mesh)
  train_acc = float(result["train_eval_accuracy"])
  data = {"train_accuracy": train_acc,
          "test_accuracy": float(result["test_accuracy"]),
          "steps": int(result["steps"]),
          "num_train": int(rsource.info.num_examples["train"]),
          "min_train_accuracy": float(sc.min_train_accuracy),
          "chance": 1.0 / rsource.info.num_classes}
  record = {"test": "data", "model": model_name, "meta": meta, "data": data,
            "steps": [{"step": 0, "name": "true labels", "layers": []},
                      {"step": 1, "name": "random labels", "layers": []}]}
  if train_acc < sc.min_train_accuracy:
    logging.warning(
        "%s: the random-label model reached %.4f training accuracy after %d "
        "steps, below config.sanity.min_train_accuracy=%.2f: its maps are not "
        "compared (raise config.sanity.random_labels.max_steps)", model_name,
        train_acc, data["steps"], sc.min_train_accuracy)
    record.update(status="refused", rows=[])
    return record
  extra = {"train_accuracy": train_acc,
           "test_accuracy": data["test_accuracy"]}
  rmodule, rvars = load_trained(random_label_config(model_cfg), rdir, rsource,
                                mesh)
  maps = explain(config, rmodule, rvars, images, tuple(reference))
  pred = _predictions(rmodule, rvars, images)
  rows = _compare_rows(
      config, reference, maps, floor, fg, test="data", model_name=model_name,
      step=1, step_name="random labels", layers=(),
      extra={**extra, "model_accuracy": float(np.mean(pred == labels))})
  _write_npz(os.path.join(mdir, "data_maps.npz"),
             _visual(images, {"true labels": reference,
                              "random labels": maps}, sc.num_visualize))
  record.update(status="compared", rows=rows)
  return record


# ---------------------------------------------------------------------------
# The stage.


def _settings(config, model_name: str) -> dict[str, Any]:
  """What a model's sanity results depend on (their fingerprint's input)."""
  data = config.data
  return {
      "model": model_name, "model_config": _as_dict(config.model),
      "train": _as_dict(config.train), "seed": int(config.seed),
      "data": {k: _as_dict(data.get(k)) for k in (
          "name", "path", "image_size", "mean", "std", "num_train",
          "num_test")},
      "sanity": _as_dict(config.sanity), "explain": _estimator_options(config),
  }


def run(config, workdir: str, *, source=None, mesh=None) -> dict[str, Any]:
  """Runs every sanity check that is not finished yet, then the report.

  Args:
    config: the experiment config (`config.sanity`; the trainer's fields).
    workdir: the experiment workdir.
    source: the data Source (default: `data.get_source(config.data)`).
    mesh: the device mesh the models train on (default: every device).

  Returns:
    {'records': [one dict per (model, test)], 'report': the report's
     summary (file paths), 'training': {model: true-label metrics}}.
  """
  source = source or sources.get_source(config.data)
  validate_config(config, source.info.num_classes)
  sc = config.sanity
  start = time.time()
  images = None
  records, trained = [], {}
  for model_name in sc.models:
    model_cfg = _model_config(config, model_name)
    mdir = os.path.join(workdir, "sanity", model_name)
    fingerprint = _fingerprint(_settings(model_cfg, model_name))
    pending = [t for t in sc.tests
               if (_read_json(os.path.join(mdir, f"{t}.json")) or {}).get(
                   "fingerprint") != fingerprint]
    tdir = os.path.join(workdir, model_name, "true_labels")
    trained[model_name] = metrics = train_true_labels(model_cfg, tdir, source,
                                                      mesh)
    logging.info("%s: true-label model, test accuracy %.4f", model_name,
                 metrics["test_accuracy"])
    for t in sc.tests:
      if t not in pending:
        logging.info("%s %s: finished earlier, skipped", model_name, t)
        records.append(_read_json(os.path.join(mdir, f"{t}.json")))
    if not pending:
      continue
    if images is None:
      images = sample_test_images(config, source)
      fg = foreground(config, images["image"])
    module, variables = load_trained(model_cfg, tdir, source, mesh)
    estimators, skipped = estimators_for(explainable(module, variables),
                                         sc.estimators)
    for est, why in skipped.items():
      logging.info("%s: estimator %s skipped: %s", model_name, est, why)
    reference = _reference_maps(config, mdir, fingerprint, module, variables,
                                images, estimators)
    floor = _floor(config, reference, fg)
    meta = _meta(model_cfg, model_name,
                 has_bn=randomization.has_batch_stats(variables),
                 skipped=skipped, accuracy=float(metrics["test_accuracy"]))
    input_shape = tuple(images["image"].shape[1:])
    labels = images["label"]
    for t in pending:
      t0 = time.time()
      if t == "data":
        record = _data_test(config, model_cfg, workdir, mdir, model_name,
                            source, images, reference, floor, fg, meta,
                            labels, mesh)
      else:
        record = _randomization_test(config, t, module, variables, images,
                                     reference, floor, fg, meta, mdir,
                                     input_shape, labels)
      record["fingerprint"] = fingerprint
      record["wall_time_s"] = time.time() - t0
      if jax.process_index() == 0:
        _write_json(os.path.join(mdir, f"{t}.json"), record)
      records.append(record)
      logging.info("%s %s: done in %.1f s", model_name, t,
                   record["wall_time_s"])
  report = None
  if jax.process_index() == 0:
    report = sanity_report.build_report(workdir, records)
  logging.info("sanity checks: %.1f s; report in %s", time.time() - start,
               os.path.join(workdir, "report"))
  return {"records": records, "report": report, "training": trained}


def _reference_maps(config, mdir, fingerprint, module, variables, images,
                    estimators) -> dict[str, np.ndarray]:
  """The trained model's maps, cached (they serve all three tests)."""
  path = os.path.join(mdir, "reference_maps.npz")
  if os.path.exists(path):
    with np.load(path) as z:
      if (str(z["fingerprint"]) == fingerprint
          and set(estimators) <= set(z.files)):
        return {e: z[e] for e in estimators}
  maps = explain(config, module, variables, images, estimators)
  if jax.process_index() == 0:
    _write_npz(path, {**maps, "fingerprint": np.array(fingerprint),
                      "index": images["index"]})
  return maps
