"""Checkpoints with orbax: a run always resumes from its own workdir."""

import os

import jax
import orbax.checkpoint as ocp


def manager(directory: str, *, max_to_keep: int = 2) -> ocp.CheckpointManager:
  """A CheckpointManager for `directory` (created if needed).

  Orbax writes each step to a temporary folder and renames it when complete,
  so an interrupted save never leaves a checkpoint that restore would read.
  """
  # Several CPU processes run their collectives over gloo, which pairs them
  # by issue order: a background save thread issuing its own would interleave
  # with the training step's and deadlock. Save synchronously there.
  async_ok = jax.process_count() == 1 or jax.default_backend() != "cpu"
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep, create=True,
          enable_async_checkpointing=async_ok))


def restore_latest(mngr: ocp.CheckpointManager, state):
  """Restores the newest checkpoint into the structure and shardings of `state`.

  Args:
    mngr: the run's manager.
    state: a train state whose arrays (or jax.ShapeDtypeStructs) have the
      target shapes and shardings.

  Returns:
    (state, step): the restored state and its step, or (`state`, 0) when the
    directory holds no checkpoint.
  """
  step = mngr.latest_step()
  if step is None:
    return state, 0
  target = jax.tree.map(
      lambda x: x if isinstance(x, jax.ShapeDtypeStruct)
      else ocp.utils.to_shape_dtype_struct(x), state)
  restored = mngr.restore(step, args=ocp.args.StandardRestore(target))
  return restored, int(step)


def save(mngr: ocp.CheckpointManager, step: int, state, *, wait: bool = False):
  """Saves `state` at `step` (asynchronously unless `wait`)."""
  mngr.save(step, args=ocp.args.StandardSave(state))
  if wait:
    mngr.wait_until_finished()
