"""What a training run reports as it goes: TensorBoard and logged figures.

Shared by a run trained alone (`trainer.train_and_evaluate`) and runs trained
together (`batched.train_and_evaluate_many`), so that both log alike.
"""

import os
from typing import Any, Mapping

import jax
import numpy as np
import tensorboardX
from absl import logging

from roar_jax import workdir as workdir_lib
from roar_jax.training import optimizers


def summary_writer(config, workdir: str, step: int):
  """TensorBoard writer of process 0 (one per run, whatever the hosts)."""
  if jax.process_index() != 0:
    return None
  writer = tensorboardX.SummaryWriter(workdir_lib.join(workdir, "tensorboard"))
  writer.add_text("config", f"<pre>{config}</pre>", step)
  return writer


def window_metrics(config, workdir: str, step: int,
                   window: list[Mapping[str, Any]], seconds: float,
                   num_steps: int) -> dict[str, float]:
  """The figures a run logs at `step`, and logs them.

  Args:
    config: the run's config.
    workdir: the run's workdir (its name goes into the log line).
    step: the step just taken.
    window: the step metrics ({'loss', 'accuracy'}, host values) since the
      last log.
    seconds: the time those steps took.
    num_steps: how many steps that was.

  Returns:
    The mean of each step metric over the window, 'steps_per_s',
    'images_per_s' and the 'learning_rate' of `step`.

  Raises:
    FloatingPointError: the mean loss is not finite.
  """
  tc = config.train
  last = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
  if not np.isfinite(last["loss"]):
    raise FloatingPointError(
        f"training loss is {last['loss']} at step {step} of {workdir}; "
        "lower config.train.learning_rate or check the input data")
  last["steps_per_s"] = num_steps / max(seconds, 1e-9)
  last["images_per_s"] = last["steps_per_s"] * tc.batch_size
  last["learning_rate"] = float(optimizers.learning_rate_schedule(tc)(step))
  logging.info("%s step %d/%d: loss %.4f, accuracy %.3f, lr %.3g, "
               "%.1f images/s", os.path.basename(workdir.rstrip("/")), step,
               int(tc.num_steps), last["loss"], last["accuracy"],
               last["learning_rate"], last["images_per_s"])
  return last


def report(writer, callback, step: int, last: Mapping[str, float]):
  """A run's logged figures to its TensorBoard (process 0's `writer`, else
  None) and its step callback (or None)."""
  if writer is not None:
    for k, v in last.items():
      writer.add_scalar(f"train/{k}", v, step)
  if callback is not None:
    callback(step, last)
