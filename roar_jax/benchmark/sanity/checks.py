"""`--mode=sanity`: the sanity checks of Adebayo et al. (2018), end to end.

For every model of `config.sanity.models`:

1. train it on the true labels (`W/sanity/<model>/true_labels`, resumed like
   any training run; `models.py`);
2. explain the same N test images (`config.sanity.num_images`, drawn once from
   the seed) with every configured estimator: the reference maps (`maps.py`);
3. cascading randomization: re-initialize the layers from the logits down,
   cumulatively, and compare each step's maps with the reference maps;
4. independent randomization: re-initialize one layer at a time, the others
   trained, and compare likewise;
5. data randomization: train the same architecture on permuted training
   labels (`W/sanity/<model>/random_labels_<N>`) until its training accuracy
   reaches `config.sanity.min_train_accuracy` (doubling the steps up to
   `config.sanity.random_labels.max_steps`); if it does, compare its maps
   with the reference maps, else record the accuracies it reached and refuse
   to compare (a model that has not fitted the random labels says nothing
   about them). (`comparisons.py`.)
6. the repaired tests, when `config.sanity.tests` names them
   (`repaired_tests.py`): bottom-up randomization, eMPRT (the rise of the
   maps' histogram entropy under full randomization), sMPRT (bottom-up on
   denoised maps) and the random-logit test (maps of another class), with
   Quantus's defaults (`config.sanity.repaired`).

Every comparison reports, per estimator and metric (`similarity.METRICS`), the
mean and std over the N images, and beside it the floor: the same metric
between the reference map and an independent N(0, 1) map. The controls
(`config.sanity.controls`: random and sobel) go through every test too: their
maps, which ignore the model, compared with each estimator's trained maps,
show what a metric gives a map that knows nothing of the model; the report
says which estimators beat them.

Choices, stated in every record and in the report (`settings.meta`):
- re-initialization: `config.sanity.init` ('original': the layer's own
  initializers re-run, a zero-initialized BatchNorm scale set to one;
  'truncated_normal': std `init_std`), layer i drawing from
  `fold_in(fold_in(key(seed), 2), i)` (randomization.py);
- BatchNorm statistics reset or kept (`config.sanity.reset_batch_stats`);
- the class explained: 'predicted', the top class of the model being explained
  (the released code's choice: after randomization it is the random model's
  own top class), or 'label', the true label;
- the SmoothGrad/VarGrad noise is the same for every model compared (one key
  for all, per image index), so the noise itself does not lower similarity;
- the seeds of every random choice (`seeds`).

Every artifact records its provenance (`artifacts.py`); before any work the
run checks them against the config and stops, naming the changed fields,
unless `recompute` moves the stale ones aside. A finished record is reused;
an unchanged rerun does no work and writes the same report (`report.py`).
"""

import io
import os
import time
from typing import Any

import jax
from jax.experimental import multihost_utils
import numpy as np
from absl import logging

from roar_jax import models
from roar_jax import provenance as provenance_lib
from roar_jax import report_folder
from roar_jax import training
from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.sanity import artifacts
from roar_jax.benchmark.sanity import comparisons
from roar_jax.benchmark.sanity import maps as maps_lib
from roar_jax.benchmark.sanity import models as models_lib
from roar_jax.benchmark.sanity import randomization
from roar_jax.benchmark.sanity import repaired_tests
from roar_jax.benchmark.sanity import report as sanity_report
from roar_jax.benchmark.sanity import settings
from roar_jax.data import sources

# The public names of the stage (main.py, config validation, the tests).
TESTS = settings.TESTS
validate_config = settings.validate_config
seeds = settings.seeds


def _input_shape(config, source) -> tuple[int, int, int]:
  size = int(config.data.image_size)
  return (size, size, int(source.info.image_shape[-1]))


def make_plan(config, wd: workdir_lib.Workdir, source) -> artifacts.Plan:
  """The artifacts of the config's sanity checks (nothing computed)."""
  shape = _input_shape(config, source)

  def supported(model_cfg):
    module = models.get_model(model_cfg.model, source.info.num_classes)
    return maps_lib.supported_estimators(module, shape,
                                         settings.estimators(config))

  return artifacts.plan(config, wd, source, supported)


def open_run(config, plan: artifacts.Plan, *, recompute: bool):
  """Checks the workdir against the config before any work (process 0)."""
  if jax.process_index() == 0:
    provenance_lib.settle(plan.all(), plan.workdir, recompute=recompute)
    workdir_lib.write_config(plan.workdir, config, "sanity")
  if jax.process_count() > 1:
      multihost_utils.sync_global_devices("sanity workdir checked")


def _train_true_model(mplan: artifacts.ModelPlan, source, mesh
                      ) -> dict[str, Any]:
  done = training.load_metrics(mplan.true_model.path)
  if done is not None and done.get("steps") == mplan.config.train.num_steps:
    return done
  if jax.process_index() == 0:
    mplan.true_model.write()
  return models_lib.train_true_labels(mplan.config, mplan.true_model.path,
                                      source, mesh)


def _load_npz(path: str) -> dict[str, np.ndarray]:
  with np.load(io.BytesIO(workdir_lib.read_bytes(path))) as z:
    return {k: z[k] for k in z.files}


def _reference_maps(mplan, module, variables, images, names, controls
                    ) -> dict[str, np.ndarray]:
  """The trained model's maps of `names` (stored once per estimator) and of
  the controls (cheap: computed every run)."""
  out, missing = {}, []
  for est in names:
    path = artifacts.maps_file(mplan.reference[est])
    if workdir_lib.exists(path):
      out[est] = _load_npz(path)["maps"]
    else:
      missing.append(est)
  methods = tuple(missing) + tuple(controls)
  new = (maps_lib.explain(mplan.config, module, variables, images, methods)
         if methods else {})
  for est in missing:
    out[est] = new[est]
    if jax.process_index() == 0:
      mplan.reference[est].write()
      workdir_lib.write_npz(artifacts.maps_file(mplan.reference[est]),
                            maps=new[est], index=images["index"])
  return {**out, **{c: new[c] for c in controls}}


def _context(mplan, source, mesh, images, meta, pending_all):
  module, variables = models_lib.load_trained(
      mplan.config, mplan.true_model.path, source, mesh)
  controls = settings.controls(mplan.config)
  # One call for the reference maps and the controls: the same methods as
  # every later step's, so their compiled code is reused.
  maps = _reference_maps(mplan, module, variables, images, pending_all,
                         controls)
  reference = {e: maps[e] for e in pending_all}
  control_maps = {c: maps[c] for c in controls}
  return comparisons.Context(
      config=mplan.config, plan=mplan, module=module, variables=variables,
      images=images, comparer=maps_lib.Comparer(mplan.config, reference,
                                                images),
      control_maps=control_maps, meta=meta, source=source, mesh=mesh)


def _meta(config, mplan, source, accuracy) -> dict[str, Any]:
  module = models.get_model(mplan.config.model, source.info.num_classes)
  abstract = jax.eval_shape(
      module.init, jax.random.key(0),
      jax.ShapeDtypeStruct((1, *_input_shape(config, source)), np.float32))
  return settings.meta(mplan.config, mplan.name,
                       has_bn=randomization.has_batch_stats(abstract),
                       skipped=mplan.skipped, accuracy=accuracy)


def _merged(mplan, test, new, meta) -> dict[str, Any] | None:
  """One record per (model, test): its estimators' records, in config order."""
  parts = []
  for est in mplan.estimators:
    artifact = mplan.records[(test, est)]
    parts.append(new.get(est) or workdir_lib.read_json(
        artifacts.record_file(artifact)))
  if not parts:
    return None
  record = {"test": test, "model": mplan.name, "meta": meta,
            "status": parts[0]["status"], "steps": parts[0]["steps"],
            "estimators": list(mplan.estimators),
            "rows": [r for p in parts for r in p["rows"]],
            "control_rows": [r for p in parts for r in p["control_rows"]],
            "maps_files": [artifacts.maps_file(mplan.records[(test, e)])
                           for e in mplan.estimators]}
  # A test's own fields: the data test's accuracies, eMPRT's bins, the
  # random-logit classes (the same in every estimator's record).
  for key in ("data", "n_bins", "classes"):
    if key in parts[0]:
      record[key] = parts[0][key]
  return record


def _run_model(config, mplan, source, mesh, images_fn) -> tuple[list, dict]:
  """The tests of one model not finished yet; its merged records."""
  metrics = _train_true_model(mplan, source, mesh)
  logging.info("%s: true-label model, test accuracy %.4f", mplan.name,
               metrics["test_accuracy"])
  for est, why in mplan.skipped.items():
    logging.info("%s: estimator %s skipped: %s", mplan.name, est, why)
  meta = _meta(config, mplan, source, float(metrics["test_accuracy"]))
  tests = tuple(config.sanity.tests)
  pending = {t: mplan.pending(t) for t in tests}
  new = {}
  if any(pending.values()):
    pending_all = tuple(e for e in mplan.estimators
                        if any(e in p for p in pending.values()))
    ctx = _context(mplan, source, mesh, images_fn(), meta, pending_all)
    for t in tests:
      if pending[t]:
        new[t] = repaired_tests.run_test(ctx, t, pending[t])
  for t in tests:
    if not pending[t]:
      logging.info("%s %s: finished earlier, skipped", mplan.name, t)
  records = [r for t in tests
             if (r := _merged(mplan, t, new.get(t, {}), meta)) is not None]
  return records, metrics


def run(config, workdir: str, *, source=None, mesh=None,
        recompute: bool = False) -> dict[str, Any]:
  """Runs every sanity check that is not finished yet, then the report.

  Args:
    config: the experiment config (`config.sanity`; the trainer's fields).
    workdir: the experiment workdir.
    source: the data Source (default: `data.get_source(config.data)`).
    mesh: the device mesh the models train on (default: every device).
    recompute: move artifacts made under another config aside (to
      W/stale/) and compute them anew, instead of stopping.

  Returns:
    {'records': [one dict per (model, test)], 'report': the report's
     summary (file paths), 'training': {model: true-label metrics}}.

  Raises:
    workdir.WorkdirError: artifacts of another config and not `recompute`;
      one line naming the changed fields.
  """
  source = source or sources.get_source(config.data)
  validate_config(config, source.info.num_classes)
  plan = make_plan(config, workdir_lib.as_workdir(workdir), source)
  open_run(config, plan, recompute=recompute)
  start = time.time()
  images = {}

  def images_fn():
    if not images:
      images.update(maps_lib.sample_test_images(config, source))
    return images

  records, trained = [], {}
  for mplan in plan.models:
    recs, trained[mplan.name] = _run_model(config, mplan, source, mesh,
                                           images_fn)
    records += recs
  report = None
  if jax.process_index() == 0:
    # Swapped in whole: an interrupted build leaves the old sanity files.
    # The pages too, unless the grid's report owns them.
    owns = report_folder.with_pages(
        report_folder.owns_sanity,
        not report_folder.has_grid_report(plan.workdir))
    with report_folder.staged(plan.workdir, owns) as wd:
      report = sanity_report.build_report(wd, records)
    # The files' final paths, now the staging folder is swapped in.
    report["files"] = [plan.workdir.report(os.path.basename(f))
                       for f in report["files"]]
  logging.info("sanity checks: %.1f s; report in %s", time.time() - start,
               plan.workdir.report())
  return {"records": records, "report": report, "training": trained}
