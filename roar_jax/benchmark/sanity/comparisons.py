"""The three tests of Adebayo et al. for one model, estimator by estimator.

- cascading randomization: the layers re-initialized from the logits down,
  cumulatively; each step's maps compared with the trained model's;
- independent randomization: one layer at a time, the others trained;
- bottom-up randomization (and sMPRT, through `repaired_tests.py`): the
  layers re-initialized from the input up, cumulatively;
- data randomization: the random-label model's maps against the true-label
  model's, if it fitted its labels (else the accuracies it reached).

At every step the controls (`settings.CONTROLS`) are explained too, and
their maps compared with each estimator's trained maps (`control_rows`).
Each (test, estimator) gives one record, stored in its own folder
(`artifacts.py`): rows, control rows, steps, and the maps of the map grids.
"""

import dataclasses
import time
from typing import Any

import jax
import numpy as np
import tqdm
from absl import logging

from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.sanity import artifacts
from roar_jax.benchmark.sanity import maps as maps_lib
from roar_jax.benchmark.sanity import models as models_lib
from roar_jax.benchmark.sanity import randomization
from roar_jax.benchmark.sanity import repaired
from roar_jax.benchmark.sanity import settings

# The layers randomized at each step of a layer-by-layer test. sMPRT
# randomizes bottom-up, as Quantus's SmoothMPRT does by default.
STEPS = {"cascading": randomization.cascading_steps,
         "independent": randomization.independent_steps,
         "bottom_up": repaired.bottom_up_steps,
         "smprt": repaired.bottom_up_steps}


@dataclasses.dataclass
class Context:
  """What every test of one model reads."""
  config: Any  # The model's config.
  plan: artifacts.ModelPlan
  module: Any
  variables: Any
  images: dict[str, np.ndarray]
  comparer: maps_lib.Comparer
  control_maps: dict[str, np.ndarray]  # On the trained model.
  meta: dict[str, Any]
  source: Any
  mesh: Any

  @property
  def controls(self) -> tuple[str, ...]:
    return tuple(self.control_maps)

  def explain(self, module, variables, names):
    return maps_lib.explain(self.config, module, variables, self.images,
                            tuple(names) + self.controls)

  def accuracy(self, module, variables) -> tuple[np.ndarray, float]:
    pred = maps_lib.predictions(module, variables, self.images)
    return pred, float(np.mean(pred == self.images["label"]))


def write_records(ctx: Context, test, pending, rows, control_rows, steps,
                  visual, status="compared", **extra
                  ) -> dict[str, dict[str, Any]]:
  """One record per pending estimator; writes its folder (process 0)."""
  out = {}
  for est in pending:
    record = {"test": test, "model": ctx.plan.name, "estimator": est,
              "status": status, "steps": steps, "meta": ctx.meta,
              "rows": [r for r in rows if r["estimator"] == est],
              "control_rows": [r for r in control_rows
                               if r["reference"] == est], **extra}
    out[est] = record
    if jax.process_index() != 0:
      continue
    artifact = ctx.plan.records[(test, est)]
    artifact.write()
    if visual:
      keep = {k: v for k, v in visual.items()
              if "|" not in k or k.split("|")[0] in (est,) + ctx.controls}
      workdir_lib.write_npz(artifacts.maps_file(artifact), **keep)
    workdir_lib.write_json(artifacts.record_file(artifact), record)
  return out


def randomization_test(ctx: Context, test: str, pending
                       ) -> dict[str, dict[str, Any]]:
  """A layer-by-layer randomization (`STEPS[test]`) of the pending
  estimators: each step's maps (`ctx.explain`) against `ctx.comparer`'s."""
  sc = ctx.config.sanity
  names = randomization.layer_names(ctx.module, ctx.variables)
  plan = STEPS[test](names)
  key = jax.random.fold_in(jax.random.key(int(ctx.config.seed)),
                           settings.REINIT_STREAM)
  trained_pred, accuracy = ctx.accuracy(ctx.module, ctx.variables)
  reference = {e: ctx.comparer.reference[e] for e in pending}
  maps = {**reference, **ctx.control_maps}
  where = {"test": test, "model": ctx.plan.name, "step": 0,
           "step_name": "original", "layers": "", "model_accuracy": accuracy,
           "same_prediction": 1.0}
  rows = ctx.comparer.rows(maps, pending, where)
  control_rows = ctx.comparer.control_rows(maps, ctx.controls, pending, where)
  visual = {"original": maps}
  input_shape = tuple(ctx.images["image"].shape[1:])
  bar = tqdm.tqdm(plan, desc=f"{ctx.plan.name} {test}", disable=None,
                  leave=False)
  for step, layers in enumerate(bar, start=1):
    new = randomization.randomize(
        ctx.module, ctx.variables, layers, key, init=sc.init,
        input_shape=input_shape, init_std=sc.init_std,
        reset_batch_stats=sc.reset_batch_stats)
    maps = ctx.explain(ctx.module, new, pending)
    pred, accuracy = ctx.accuracy(ctx.module, new)
    # Cascading and bottom-up steps are named by the layer they add (the
    # paper's x axis), independent steps by their single layer: layers[-1].
    where = {"test": test, "model": ctx.plan.name, "step": step,
             "step_name": layers[-1], "layers": "+".join(layers),
             "model_accuracy": accuracy,
             "same_prediction": float(np.mean(pred == trained_pred))}
    rows += ctx.comparer.rows(maps, pending, where)
    control_rows += ctx.comparer.control_rows(maps, ctx.controls, pending,
                                              where)
    visual[layers[-1]] = maps
  steps = [{"step": 0, "name": "original", "layers": []}] + [
      {"step": i, "name": l[-1], "layers": list(l)}
      for i, l in enumerate(plan, start=1)]
  return write_records(ctx, test, pending, rows, control_rows, steps,
                       maps_lib.visual(ctx.images, visual, sc.num_visualize))


def _train_random_model(ctx: Context):
  """The random-label model, trained (or reused); its source and metrics."""
  artifact = ctx.plan.random_model
  rsource = models_lib.random_label_source(ctx.config, ctx.source)
  if jax.process_index() == 0:
    artifact.write()
  result = models_lib.train_random_labels(ctx.config, artifact.path, rsource,
                                          ctx.mesh)
  return rsource, result


def data_test(ctx: Context, pending) -> dict[str, dict[str, Any]]:
  """Data randomization: the permuted-label model against the true-label one."""
  sc = ctx.config.sanity
  rsource, result = _train_random_model(ctx)
  train_acc = float(result["train_eval_accuracy"])
  data = {"train_accuracy": train_acc,
          "test_accuracy": float(result["test_accuracy"]),
          "steps": int(result["steps"]),
          "num_train": int(rsource.info.num_examples["train"]),
          "min_train_accuracy": float(sc.min_train_accuracy),
          "chance": 1.0 / rsource.info.num_classes}
  steps = [{"step": 0, "name": "true labels", "layers": []},
           {"step": 1, "name": "random labels", "layers": []}]
  if train_acc < sc.min_train_accuracy:
    logging.warning(
        "%s: the random-label model reached %.4f training accuracy after %d "
        "steps, below config.sanity.min_train_accuracy=%.2f: its maps are not "
        "compared (raise config.sanity.random_labels.max_steps)",
        ctx.plan.name, train_acc, data["steps"], sc.min_train_accuracy)
    return write_records(ctx, "data", pending, [], [], steps, None,
                         status="refused", data=data)
  rmodule, rvars = models_lib.load_trained(
      models_lib.random_label_config(ctx.config), ctx.plan.random_model.path,
      rsource, ctx.mesh)
  maps = ctx.explain(rmodule, rvars, pending)
  _, accuracy = ctx.accuracy(rmodule, rvars)
  where = {"test": "data", "model": ctx.plan.name, "step": 1,
           "step_name": "random labels", "layers": "",
           "train_accuracy": train_acc, "test_accuracy": data["test_accuracy"],
           "model_accuracy": accuracy}
  rows = ctx.comparer.rows(maps, pending, where)
  control_rows = ctx.comparer.control_rows(maps, ctx.controls, pending, where)
  reference = {**{e: ctx.comparer.reference[e] for e in pending},
               **ctx.control_maps}
  visual = maps_lib.visual(ctx.images, {"true labels": reference,
                                        "random labels": maps},
                           sc.num_visualize)
  return write_records(ctx, "data", pending, rows, control_rows, steps,
                       visual, data=data)


def run_test(ctx: Context, test: str, pending) -> dict[str, dict[str, Any]]:
  """One test for the pending estimators; records with their wall time."""
  t0 = time.time()
  if test == "data":
    records = data_test(ctx, pending)
  else:
    records = randomization_test(ctx, test, pending)
  logging.info("%s %s: %d estimators done in %.1f s", ctx.plan.name, test,
               len(pending), time.time() - t0)
  return records
