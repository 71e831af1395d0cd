"""Training and evaluation of one model in one workdir.

`train_and_evaluate` is what `--mode=train` runs, and what every ROAR/KAR
retrain and sanity-check model runs on its own dataset: it trains from random
initialization for `config.train.num_steps`, checkpointing as it goes, resumes
from the newest checkpoint of its workdir, and evaluates on the whole test
split (the last batch padded and masked, no test image dropped).
"""

import functools
import hashlib
import json
import os
import sys
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
import tensorboardX
import tqdm
from absl import logging
from jax.sharding import Mesh

from roar_jax import models
from roar_jax import workdir as workdir_lib
from roar_jax.data import pipeline
from roar_jax.data import sources
from roar_jax.training import checkpoints
from roar_jax.training import mesh as mesh_lib
from roar_jax.training import optimizers
from roar_jax.training import per_image
from roar_jax.training import progress
from roar_jax.training import resumes
from roar_jax.training import steps

METRICS_FILE = "metrics.json"

StepCallback = Callable[[int, Mapping[str, float]], None]


@functools.lru_cache(maxsize=32)
def _model_and_optimizer(model_json: str, train_json: str, num_classes: int):
  """Builds (module, optimizer) once per configuration.

  Both are static parts of the train state, so building them once lets every
  run with the same configuration (a ROAR grid retrains one model many times)
  reuse the compiled steps.
  """
  # JSON turns tuples into lists; module fields must stay hashable.
  model_config = json.loads(model_json, object_hook=lambda d: {
      k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
  module = models.get_model(model_config, num_classes)
  tx = optimizers.create_optimizer(json.loads(train_json))
  return module, tx


@functools.lru_cache(maxsize=8)
def _compiled_steps(mesh: Mesh, label_smoothing: float):
  repl, data = mesh_lib.replicated(mesh), mesh_lib.data_sharding(mesh)
  train = jax.jit(
      functools.partial(steps.train_step, label_smoothing=label_smoothing),
      in_shardings=(repl, data, repl), out_shardings=(repl, repl),
      donate_argnums=0)
  evaluate = jax.jit(steps.eval_step, in_shardings=(repl, data),
                     out_shardings=repl)
  return train, evaluate


def _config_json(cfg) -> str:
  return json.dumps(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg),
                    sort_keys=True, default=str)


def create_state(config, num_classes: int, image_shape, mesh: Mesh,
                 rng: jax.Array) -> steps.TrainState:
  """A freshly initialized, replicated train state.

  Args:
    config: the experiment config (uses config.model and config.train).
    num_classes: number of labels.
    image_shape: (H, W, C) of the model's input.
    mesh: the device mesh.
    rng: the initialization key.

  Returns:
    The train state at step 0, replicated over the mesh.
  """
  return _compiled_init(_config_json(config.model), _config_json(config.train),
                        num_classes, tuple(image_shape), mesh)(rng)


@functools.lru_cache(maxsize=16)
def _compiled_init(model_json: str, train_json: str, num_classes: int,
                   image_shape: tuple[int, ...], mesh: Mesh):
  """The jitted initializer, compiled once per model, optimizer and shape
  (every retrain of a grid initializes the same model)."""
  module, tx = _model_and_optimizer(model_json, train_json, num_classes)

  def init(rng):
    variables = module.init(rng, jnp.zeros((1, *image_shape), jnp.float32))
    return steps.TrainState.create(
        apply_fn=module.apply, params=variables["params"], tx=tx,
        batch_stats=variables.get("batch_stats"))

  return jax.jit(init, out_shardings=mesh_lib.replicated(mesh))


def _input_shape(config, info) -> tuple[int, int, int]:
  size = config.data.image_size or info.image_shape[0]
  return (size, size, info.image_shape[-1])


def initial_state(config, source, mesh: Mesh) -> steps.TrainState:
  """A run's state at step 0: `create_state` with the run's init key."""
  return create_state(config, source.info.num_classes,
                      _input_shape(config, source.info), mesh,
                      jax.random.fold_in(jax.random.key(config.seed), 0))


def evaluate(state, source, config, mesh: Mesh, split: str = "test",
             desc: str = "eval") -> dict[str, Any]:
  """Accuracy and loss of `state` over the whole `split` of `source`.

  Returns:
    {'accuracy', 'loss', 'num_examples', 'correct_bits'}: the last is which
    images the model classifies correctly, in the split's image-index order
    (`per_image.encode`), so that results pair by image across units.
  """
  _, eval_fn = _compiled_steps(mesh, float(config.train.label_smoothing))
  totals, rows = None, []
  batches = pipeline.eval_iterator(
      source, config.data, split,
      global_batch_size=config.train.eval_batch_size,
      process_index=jax.process_index(), process_count=jax.process_count())
  for batch in tqdm.tqdm(batches, desc=desc, leave=False, disable=None):
    batch = {k: batch[k] for k in ("image", "label", "mask", "index")}
    out, batch_rows = eval_fn(state, mesh_lib.to_global(batch, mesh))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    rows.append(batch_rows)
  totals = jax.device_get(totals)
  count = float(totals["count"])
  if count == 0:
    raise ValueError(f"split {split!r} of dataset {source.info.name!r} is "
                     "empty")
  # The rows are replicated (eval_fn's out_shardings), so every process
  # holds every image's bit.
  rows = jax.device_get(rows)
  bits = per_image.in_index_order(
      np.concatenate([r["correct"] for r in rows]),
      np.concatenate([r["index"] for r in rows]))
  return {"accuracy": float(totals["correct"]) / count,
          "loss": float(totals["loss"]) / count, "num_examples": int(count),
          "correct_bits": per_image.encode(bits)}


def params_checksum(state) -> str:
  """A hash of the whole train state (variables and optimizer state): a
  restored checkpoint must match the one whose metrics were reported."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(state):
    # Replicated arrays: this process's first copy holds all of it.
    data = leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf
    digest.update(np.ascontiguousarray(np.asarray(data)).tobytes())
  return digest.hexdigest()[:16]


def data_seed(config) -> int:
  """The seed of a run's training data order and augmentation."""
  return int(config.seed) * 1_000_003


def step_key(config) -> jax.Array:
  """The key of a run's stochastic layers (`train_step` folds in the step)."""
  return jax.random.fold_in(jax.random.key(config.seed), 1)


def _train_loop(config, workdir: str, state, start_step: int, source, mesh,
                mngr, step_callback) -> tuple[Any, dict[str, float]]:
  """Runs the steps after `start_step`; returns (state, last logged metrics).
  """
  tc = config.train
  num_steps = int(tc.num_steps)
  train_fn, _ = _compiled_steps(mesh, float(tc.label_smoothing))
  step_rng = step_key(config)
  writer = progress.summary_writer(config, workdir, start_step)
  # The data order is a function of (seed, step): a resumed run starts at
  # the batch an uninterrupted run would take next.
  batches = pipeline.train_iterator(
      source, config.data, global_batch_size=tc.batch_size,
      seed=data_seed(config), start_step=start_step,
      process_index=jax.process_index(), process_count=jax.process_count())
  log_every = int(tc.log_every)
  ckpt_every = int(tc.checkpoint_every) or num_steps
  bar = tqdm.tqdm(total=num_steps, initial=start_step,
                  desc=f"train {os.path.basename(workdir.rstrip('/'))}",
                  disable=None, file=sys.stderr, leave=False)
  tick, tick_step, window, last = time.time(), start_step, [], {}
  for step in range(start_step + 1, num_steps + 1):
    state, metrics = train_fn(state, mesh_lib.to_global(next(batches), mesh),
                              step_rng)
    window.append(metrics)
    bar.update(1)
    if step % log_every == 0 or step == num_steps or step % ckpt_every == 0:
      now = time.time()
      last = progress.window_metrics(config, workdir, step,
                                     jax.device_get(window), now - tick,
                                     step - tick_step)
      window, tick, tick_step = [], now, step
      bar.set_postfix(loss=f"{last['loss']:.4f}", acc=f"{last['accuracy']:.3f}")
      progress.report(writer, step_callback, step, last)
    if step % ckpt_every == 0 or step == num_steps:
      checkpoints.save(mngr, step, state)
  bar.close()
  if writer is not None:
    writer.close()
  return state, last


def train_and_evaluate(config, workdir: str, *, source=None,
                       step_callback: StepCallback | None = None,
                       mesh: Mesh | None = None) -> dict[str, Any]:
  """Trains `config.model` on `source` (or `config.data`), then evaluates.

  Args:
    config: the experiment config.
    workdir: where checkpoints, TensorBoard logs and final metrics go. A run
      resumes from the newest checkpoint here; a finished run only evaluates.
    source: a data Source; default `data.get_source(config.data)`.
    step_callback: called as `step_callback(step, metrics)` after each logged
      step (progress reporting, tests).
    mesh: the device mesh; default all devices of all processes.

  Returns:
    {'test_accuracy', 'test_loss', 'train_loss', 'train_accuracy', 'steps',
     'num_test_examples', 'test_correct_bits', 'wall_time_s',
     'params_checksum'} (plus
    'train_eval_accuracy' when `config.train.eval_train` is set).
  """
  start_time = time.time()
  tf.config.set_visible_devices([], "GPU")  # tf.data must not take GPU memory.
  workdir_lib.makedirs(workdir)
  source = source or sources.get_source(config.data)
  mesh = mesh or mesh_lib.create_mesh()
  state = initial_state(config, source, mesh)
  mngr = checkpoints.manager(workdir_lib.join(workdir, "checkpoints"))
  state, start_step = checkpoints.restore_latest(
      mngr, state, workdir_lib.join(workdir, "checkpoints"))
  num_steps = int(config.train.num_steps)
  last = {}
  if 0 < start_step < num_steps:
    logging.info("Resuming %s from step %d of %d", workdir, start_step,
                 num_steps)
    resumes.record(workdir, start_step)
  if start_step < num_steps:
    state, last = _train_loop(config, workdir, state, start_step, source,
                              mesh, mngr, step_callback)
  checkpoints.finish(mngr)
  return write_metrics(config, workdir, state, source, mesh, last,
                       time.time() - start_time)


def write_metrics(config, workdir: str, state, source, mesh: Mesh,
                  last: Mapping[str, float], wall_time: float
                  ) -> dict[str, Any]:
  """Evaluates the trained `state` and writes the run's metrics.json: test
  (and optionally train) accuracy, with the training figures `last` of this
  run or, for a run finished earlier (`last` empty), those it recorded.

  Args:
    wall_time: the run's seconds up to its evaluation ('wall_time_s').

  Returns:
    The metrics, as `train_and_evaluate` returns them.
  """
  num_steps = int(config.train.num_steps)
  test = evaluate(state, source, config, mesh, "test")
  result = {
      "test_accuracy": test["accuracy"], "test_loss": test["loss"],
      "num_test_examples": test["num_examples"],
      "test_correct_bits": test["correct_bits"], "steps": num_steps,
      "train_loss": last.get("loss"), "train_accuracy": last.get("accuracy"),
      "wall_time_s": wall_time, "params_checksum": params_checksum(state),
      "resumed_from_steps": resumes.steps(workdir),
  }
  if config.train.eval_train:
    result["train_eval_accuracy"] = evaluate(
        state, source, config, mesh, "train", desc="eval train")["accuracy"]
  if not last:  # Finished earlier: keep the training figures it recorded.
    previous = load_metrics(workdir) or {}
    for key in ("train_loss", "train_accuracy"):
      result[key] = previous.get(key)
  if jax.process_index() == 0:
    with tensorboardX.SummaryWriter(
        workdir_lib.join(workdir, "tensorboard")) as writer:
      writer.add_scalar("test/accuracy", result["test_accuracy"], num_steps)
    workdir_lib.write_json(workdir_lib.join(workdir, METRICS_FILE), result)
  logging.info("%s: test accuracy %.4f over %d images after %d steps", workdir,
               result["test_accuracy"], result["num_test_examples"], num_steps)
  return result


def load_metrics(workdir: str) -> dict[str, Any] | None:
  """The final metrics a finished run wrote, or None."""
  return workdir_lib.read_json(workdir_lib.join(workdir, METRICS_FILE),
                               missing_ok=True)


def load_state(config, workdir: str, *, source=None,
               mesh: Mesh | None = None) -> steps.TrainState:
  """The trained state of a workdir, replicated over the mesh.

  A finished run restores exactly the checkpoint whose metrics it reported
  (its step and variables' checksum are checked); a run without metrics, the
  newest checkpoint. The checkpoint is restored into an abstract state
  (`jax.eval_shape`): no initializer is compiled only to be overwritten.

  Args:
    config: the config the model was trained with.
    workdir: the training workdir (holding checkpoints/).
    source: the data Source (for the number of classes and image shape);
      default `data.get_source(config.data)`.
    mesh: the device mesh; default all devices.

  Returns:
    The restored TrainState.

  Raises:
    workdir.WorkdirError: no checkpoint, the reported one is missing or does
      not restore, or its variables differ from the reported ones.
  """
  source = source or sources.get_source(config.data)
  mesh = mesh or mesh_lib.create_mesh()
  replicated = mesh_lib.replicated(mesh)
  abstract = jax.eval_shape(
      lambda key: create_state(config, source.info.num_classes,
                               _input_shape(config, source.info), mesh, key),
      jax.random.key(0))
  abstract = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
      abstract)
  metrics = load_metrics(workdir)
  folder = workdir_lib.join(workdir, "checkpoints")
  mngr = checkpoints.manager(folder)
  try:
    state = checkpoints.restore_step(
        mngr, abstract, metrics and metrics.get("steps"), folder)
  finally:
    mngr.close()
  expected = metrics and metrics.get("params_checksum")
  if expected and params_checksum(state) != expected:
    raise workdir_lib.WorkdirError(
        f"{folder}: the checkpoint of step {metrics['steps']} does not hold "
        "the model whose metrics were reported (corrupt?); rerun with "
        "--recompute to train it again")
  return state


def load_model(config, workdir: str, *, source=None, mesh: Mesh | None = None):
  """The trained model of a workdir, for explaining or sanity checks.

  Args:
    config: the config the model was trained with.
    workdir: the training workdir (holding checkpoints/).
    source: the data Source; default `data.get_source(config.data)`.
    mesh: the device mesh; default all devices.

  Returns:
    (module, variables): the flax module and its trained variables.
  """
  source = source or sources.get_source(config.data)
  state = load_state(config, workdir, source=source, mesh=mesh)
  module, _ = _model_and_optimizer(_config_json(config.model),
                                   _config_json(config.train),
                                   source.info.num_classes)
  return module, steps.variables_of(state)
