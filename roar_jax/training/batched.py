"""Several runs of one training recipe trained together, in one program.

A ROAR grid retrains one model recipe many times, each run on its own data
and seed. A CIFAR-size model leaves an accelerator mostly idle, so
`train_and_evaluate_many` trains K such runs at once: `jax.vmap` of
`steps.train_step` over a stacked train state, stacked batches and per-run
keys, jitted once (batch axis of every run split over the mesh's 'data' axis,
as a run alone splits it; the state replicated).

Each run keeps everything it would have trained alone: its initialization
(`trainer.initial_state`), data order and augmentation (its own
`trainer.data_seed`), step key (`trainer.step_key`), checkpoints in its own
`<workdir>/checkpoints`, TensorBoard logs, step callbacks and metrics.json
(`trainer.write_metrics` of its own, unstacked state, so `params_checksum`
matches its checkpoint and `trainer.load_state` restores it). What differs:

- Values agree with a run alone to float rounding, not bit for bit: under
  vmap a convolution over K stacked kernels becomes one grouped convolution,
  whose sums XLA orders differently (tests/test_batched_retrains.py).
- `wall_time_s` is the group's time to the end of training divided by K (the
  share of the machine each run used), `steps_per_s` the group's step rate.

Only runs that start from step 0 are trained together: a run whose workdir
holds a checkpoint (interrupted, or trained but not evaluated) resumes alone
through `trainer.train_and_evaluate`, exactly as it would have without
batching. An interrupted group leaves each run with its checkpoints, so each
resumes alone.
"""

import functools
import sys
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
import tqdm
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from roar_jax import workdir as workdir_lib
from roar_jax.data import pipeline
from roar_jax.training import checkpoints
from roar_jax.training import mesh as mesh_lib
from roar_jax.training import progress
from roar_jax.training import steps
from roar_jax.training import trainer


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """[K, B, ...]: every run's batch axis B split over 'data', as alone."""
  return NamedSharding(mesh, P(None, "data"))


@functools.lru_cache(maxsize=8)
def compiled_steps(mesh: Mesh, label_smoothing: float):
  """(train, stack, unstack): the vmapped step over [K, ...] states and
  batches (batches sharded as `batch_sharding`), and the moves between K
  states and one stacked state (bench/batched_retrains.py times them)."""
  repl = mesh_lib.replicated(mesh)
  data = batch_sharding(mesh)
  train = jax.jit(
      jax.vmap(functools.partial(steps.train_step,
                                 label_smoothing=label_smoothing)),
      in_shardings=(repl, data, repl), out_shardings=(repl, repl),
      donate_argnums=0)
  stack = jax.jit(lambda *states: jax.tree.map(lambda *x: jnp.stack(x),
                                               *states), out_shardings=repl)
  # A traced index: one program unstacks every run.
  unstack = jax.jit(lambda state, i: jax.tree.map(lambda x: x[i], state),
                    out_shardings=repl)
  return train, stack, unstack


def _to_global(batches: Sequence[dict[str, np.ndarray]], mesh: Mesh
               ) -> dict[str, jax.Array]:
  """Stacks the runs' batches (this process's rows of each) into global
  [K, B, ...] arrays, B split over 'data' as `mesh.to_global` splits it."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(
      sharding, np.stack([b[k] for b in batches])) for k in batches[0]}


def _check_shared(configs):
  """The runs must share the model and the training recipe (one program)."""
  first = configs[0]
  for c in configs[1:]:
    for section in ("model", "train"):
      if c[section].to_dict() != first[section].to_dict():
        raise ValueError(
            f"runs trained together must share config.{section}; seed "
            f"{c.seed}'s differs from seed {first.seed}'s")


def train_and_evaluate_many(configs, workdirs: Sequence[str], *, sources,
                            step_callbacks=None, mesh: Mesh | None = None
                            ) -> list[dict[str, Any]]:
  """`trainer.train_and_evaluate` of each run, the fresh ones trained together.

  Args:
    configs: one config per run; they share config.model and config.train
      (they differ in seed, and data where the sources differ).
    workdirs: each run's workdir.
    sources: each run's data Source.
    step_callbacks: one `trainer.StepCallback` (or None) per run, called as
      a run alone calls its own.
    mesh: the device mesh; default all devices of all processes.

  Returns:
    Each run's metrics, as `trainer.train_and_evaluate` returns them.
  """
  start_time = time.time()
  tf.config.set_visible_devices([], "GPU")  # As trainer's: no GPU for tf.data.
  _check_shared(configs)
  mesh = mesh or mesh_lib.create_mesh()
  callbacks = list(step_callbacks or [None] * len(configs))
  mngrs = []
  for workdir in workdirs:
    workdir_lib.makedirs(workdir)
    mngrs.append(checkpoints.manager(workdir_lib.join(workdir, "checkpoints")))
  fresh = [i for i, m in enumerate(mngrs) if m.latest_step() is None]
  if len(fresh) < 2:
    fresh = []  # One run alone is `train_and_evaluate`'s, bit for bit.
  results = [None] * len(configs)
  if fresh:
    pick = lambda seq: [seq[i] for i in fresh]
    for i, result in zip(fresh, _train_together(
        pick(configs), pick(workdirs), pick(sources), pick(mngrs),
        pick(callbacks), mesh, start_time)):
      results[i] = result
  for i in range(len(configs)):
    if i not in fresh:
      mngrs[i].close()  # The run opens its own.
      results[i] = trainer.train_and_evaluate(
          configs[i], workdirs[i], source=sources[i],
          step_callback=callbacks[i], mesh=mesh)
  return results


def _train_together(configs, workdirs, sources, mngrs, callbacks, mesh,
                    start_time) -> list[dict[str, Any]]:
  """Trains runs from step 0 in one program; evaluates each, writes its
  metrics.json, and returns the metrics."""
  tc = configs[0].train
  num_steps = int(tc.num_steps)
  train, stack, unstack = compiled_steps(mesh, float(tc.label_smoothing))
  state = stack(*[trainer.initial_state(c, s, mesh)
                  for c, s in zip(configs, sources)])
  keys = jnp.stack([trainer.step_key(c) for c in configs])
  batches = [pipeline.train_iterator(
      s, c.data, global_batch_size=tc.batch_size, seed=trainer.data_seed(c),
      process_index=jax.process_index(), process_count=jax.process_count())
             for c, s in zip(configs, sources)]
  writers = [progress.summary_writer(c, w, 0)
             for c, w in zip(configs, workdirs)]
  log_every = int(tc.log_every)
  ckpt_every = int(tc.checkpoint_every) or num_steps
  bar = tqdm.tqdm(total=num_steps, desc=f"train {len(configs)} runs together",
                  disable=None, file=sys.stderr, leave=False)
  tick, tick_step, window = time.time(), 0, []
  last = [{} for _ in configs]
  for step in range(1, num_steps + 1):
    state, metrics = train(state, _to_global([next(b) for b in batches], mesh),
                           keys)
    window.append(metrics)
    bar.update(1)
    if step % log_every == 0 or step == num_steps or step % ckpt_every == 0:
      now, host = time.time(), jax.device_get(window)
      for i, (config, workdir) in enumerate(zip(configs, workdirs)):
        last[i] = progress.window_metrics(
            config, workdir, step, [{k: m[k][i] for k in m} for m in host],
            now - tick, step - tick_step)
        progress.report(writers[i], callbacks[i], step, last[i])
      window, tick, tick_step = [], now, step
    if step % ckpt_every == 0 or step == num_steps:
      for i, mngr in enumerate(mngrs):
        checkpoints.save(mngr, step, unstack(state, i))
  bar.close()
  for mngr, writer in zip(mngrs, writers):
    checkpoints.finish(mngr)
    if writer is not None:
      writer.close()
  # Measured once, before any evaluation: each run's share of the training.
  share = (time.time() - start_time) / len(configs)
  return [trainer.write_metrics(c, w, unstack(state, i), s, mesh, last[i],
                                share)
          for i, (c, w, s) in enumerate(zip(configs, workdirs, sources))]

