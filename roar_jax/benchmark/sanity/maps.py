"""Maps for the sanity checks: the test images, explaining, and comparing.

- `sample_test_images`: the N test images every comparison uses;
- `explain`: the maps of the estimators (and the controls) of one model;
- `Comparer`: each estimator's maps against the trained model's maps (rows
  of mean and std over the images, with the random-map floor beside them),
  and each control's maps against every estimator's trained maps.
"""

import functools
import hashlib
import zlib
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from roar_jax.benchmark.sanity import settings
from roar_jax.benchmark.sanity import similarity
from roar_jax.data import pipeline
from roar_jax.saliency import explainable
from roar_jax.saliency import explaining as saliency_api
from roar_jax.saliency import model as saliency_model
from roar_jax.saliency import registry as saliency_registry


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
  rng = np.random.default_rng([int(config.seed), settings.IMAGES_STREAM])
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
  return (np.abs(images - settings.black_image(config)) > tol).any(axis=-1)


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


def supported_estimators(module, input_shape, names: Sequence[str]
                         ) -> tuple[tuple[str, ...], dict[str, str]]:
  """`estimators_for` the module's abstract variables (no weights made)."""
  variables = jax.eval_shape(
      module.init, jax.random.key(0),
      jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
  return estimators_for(explainable(module, variables), names)


def explain(config, module, variables, images: dict[str, np.ndarray],
            estimators: Sequence[str], target=None) -> dict[str, np.ndarray]:
  """Maps of `estimators` for the test images, with the configured target.

  The noise key is the same for every call, and the noise of an image depends
  on its test index, so SmoothGrad and VarGrad see identical noise on every
  model compared (and the random control gives every model the same map).
  `target` (int [N]) names the classes instead of `config.sanity.target`.
  """
  return explainer(config, module, variables, images, estimators,
                   target)(images["image"])


def explainer(config, module, variables, images: dict[str, np.ndarray],
              estimators: Sequence[str], target=None
              ) -> Callable[[Any], dict[str, np.ndarray]]:
  """`explain` of one model as a function of the pixels alone.

  The model, classes, indices, key and baseline are placed once, so that
  a caller explaining many versions of the same images (sMPRT's noisy
  copies) pays for them once.

  Args:
    config, module, variables, images, estimators, target: as `explain`;
      images gives the labels and test indices.

  Returns:
    fn(pixels [N, H, W, C]) -> {estimator: float32 maps [N, H, W, C]}.
  """
  model = explainable(module, on_one_device(variables))
  if target is not None:
    target = jnp.asarray(target)
  elif config.sanity.target != "predicted":
    target = jnp.asarray(images["label"])
  key = jax.random.fold_in(jax.random.key(int(config.seed)),
                           settings.NOISE_STREAM)
  indices = jnp.asarray(images["index"].astype(np.int32))
  baseline = jnp.asarray(settings.black_image(config))
  options = settings.estimator_options(config)
  estimators = tuple(estimators)

  def run(pixels) -> dict[str, np.ndarray]:
    maps = saliency_api.explain_all(
        model, jnp.asarray(pixels), methods=estimators, key=key,
        target=target, indices=indices, baseline=baseline, **options)
    return {e: np.asarray(jax.device_get(maps[e]), np.float32)
            for e in estimators}
  return run


def on_one_device(variables):
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


def predictions(module, variables, images) -> np.ndarray:
  logits = _jitted_apply(module)(on_one_device(variables),
                                 jnp.asarray(images["image"]))
  return np.asarray(jnp.argmax(logits, axis=-1))


def visual(images, maps_by_step: dict[str, dict[str, np.ndarray]],
           count: int) -> dict[str, np.ndarray]:
  """The first `count` images and their maps per step, for the map grids."""
  out = {"images": images["image"][:count], "index": images["index"][:count]}
  for step_name, maps in maps_by_step.items():
    for est, m in maps.items():
      out[f"{est}|{step_name}"] = m[:count]
  return out


class Comparer:
  """Compares maps with the trained model's maps, for one model.

  Attributes:
    reference: {estimator: the trained model's maps}.
    extra: {metric: fn(reference maps, maps) -> [N]}: metrics beside
      `similarity.compare`'s (the repaired tests' `repaired.FlatSpearman`,
      `repaired.ssim_flat`).
    floor: {estimator: {metric: summary}}: each metric between the reference
      maps and independent N(0, 1) maps.
  """

  def __init__(self, config, reference: dict[str, np.ndarray],
               images: dict[str, np.ndarray],
               extra: Mapping[str, Callable] | None = None):
    self.options = similarity.SimilarityOptions.from_config(
        config.sanity.get("similarity"))
    self.reference = reference
    self.extra = dict(extra or {})
    self.fg = foreground(config, images["image"])
    self.floor = {}
    for est, ref in reference.items():
      # Seeded by the estimator's name: its floor does not depend on which
      # other estimators run.
      noise = similarity.random_maps(
          ref.shape, [int(config.seed), settings.FLOOR_STREAM,
                      zlib.crc32(est.encode())])
      self.floor[est] = self._summaries(ref, noise)
    self._cache: dict[tuple[str, str, str], dict[str, Any]] = {}

  def _summaries(self, ref, maps) -> dict[str, dict[str, float]]:
    values = similarity.compare(ref, maps, options=self.options,
                                foreground=self.fg)
    values.update({name: fn(ref, maps) for name, fn in self.extra.items()})
    return {m: similarity.summarize(v) for m, v in values.items()}

  def _row(self, est, ref_name, metric, s, where) -> dict[str, Any]:
    f = self.floor[ref_name][metric]
    return {**where, "estimator": est, "reference": ref_name,
            "metric": metric, "mean": s["mean"], "std": s["std"],
            "n": s["n"], "floor_mean": f["mean"], "floor_std": f["std"]}

  def rows(self, maps, names: Sequence[str], where: dict[str, Any]
           ) -> list[dict[str, Any]]:
    """One row per (estimator of `names`, metric): its maps against its
    reference maps."""
    rows = []
    for est in names:
      for metric, s in self._summaries(self.reference[est], maps[est]).items():
        rows.append(self._row(est, est, metric, s, where))
    return rows

  def control_rows(self, maps, controls: Sequence[str], names: Sequence[str],
                   where: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (control, estimator of `names`, metric): the control's
    maps against the estimator's reference maps (column `reference`).

    A control ignores the model, so its maps are usually the same at every
    step: the comparison is computed once per distinct map.
    """
    rows = []
    for control in controls:
      digest = hashlib.sha256(maps[control].tobytes()).hexdigest()
      for est in names:
        key = (control, est, digest)
        if key not in self._cache:
          self._cache[key] = self._summaries(self.reference[est],
                                             maps[control])
        for metric, s in self._cache[key].items():
          rows.append(self._row(control, est, metric, s, where))
    return rows
