"""Checkpoints with orbax: a run always resumes from its own workdir."""

import contextlib
import os

import jax
import orbax.checkpoint as ocp

from roar_jax import workdir as workdir_lib


def manager(directory: str, *, max_to_keep: int = 2) -> ocp.CheckpointManager:
  """A CheckpointManager for `directory` (created if needed).

  Orbax writes each step to a temporary folder and renames it when complete
  (on object stores: commits it with a marker), so an interrupted save never
  leaves a checkpoint that restore would read.
  """
  # Several CPU processes run their collectives over gloo, which pairs them
  # by issue order: a background save thread issuing its own would interleave
  # with the training step's and deadlock. Save synchronously there.
  async_ok = jax.process_count() == 1 or jax.default_backend() != "cpu"
  if not workdir_lib.is_remote(directory):
    directory = os.path.abspath(directory)
  return ocp.CheckpointManager(
      directory,
      options=ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep, create=True,
          enable_async_checkpointing=async_ok))


def _target(state):
  return jax.tree.map(
      lambda x: x if isinstance(x, jax.ShapeDtypeStruct)
      else ocp.utils.to_shape_dtype_struct(x), state)


def _restore(mngr: ocp.CheckpointManager, state, step: int, folder: str):
  try:
    return mngr.restore(step, args=ocp.args.StandardRestore(_target(state)))
  except Exception as e:  # pylint: disable=broad-except
    # orbax and tensorstore raise many types for a damaged checkpoint.
    others = [s for s in mngr.all_steps() if s != step]
    raise workdir_lib.WorkdirError(
        f"{workdir_lib.join(folder, str(step))}: the checkpoint does not "
        f"restore ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
        f"other checkpoints: {sorted(others) or 'none'}; delete it to resume "
        "from an older one, or rerun with --recompute") from e


def restore_latest(mngr: ocp.CheckpointManager, state, folder: str = ""):
  """Restores the newest checkpoint into the structure and shardings of `state`.

  Args:
    mngr: the run's manager.
    state: a train state whose arrays (or jax.ShapeDtypeStructs) have the
      target shapes and shardings.
    folder: the manager's directory, for messages.

  Returns:
    (state, step): the restored state and its step, or (`state`, 0) when the
    directory holds no checkpoint.
  """
  step = mngr.latest_step()
  if step is None:
    return state, 0
  return _restore(mngr, state, step, folder), int(step)


def restore_step(mngr: ocp.CheckpointManager, state, step: int | None,
                 folder: str):
  """Restores checkpoint `step` (None: the newest), naming what is wrong.

  Raises:
    workdir.WorkdirError: no checkpoint, `step` missing, or it fails to
      restore; the message names the folder and the steps there are.
  """
  available = sorted(mngr.all_steps())
  if not available:
    raise workdir_lib.WorkdirError(
        f"no trained model in {folder}: run --mode=train with this --workdir "
        "first")
  step = available[-1] if step is None else int(step)
  if step not in available:
    raise workdir_lib.WorkdirError(
        f"{folder}: the checkpoint of step {step}, whose metrics were "
        f"reported, is missing (there are steps {available}); rerun with "
        "--recompute to train the model again")
  return _restore(mngr, state, step, folder)


def _os_error(error: BaseException | None) -> OSError | None:
  """The OSError behind an error orbax raised (it wraps them), if any."""
  while error is not None:
    if isinstance(error, OSError):
      return error
    error = error.__cause__ or error.__context__
  return None


@contextlib.contextmanager
def _writing(where: str):
  """A failed write (full disk, no permission) as one line naming `where`.

  Orbax and tensorstore report a failed write as an OSError, wrapped in
  their own errors, or (tensorstore) only in the message.
  """
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    os_error = _os_error(e)
    if os_error is not None:
      reason = workdir_lib.os_reason(os_error)
    elif "No space left" in str(e):
      reason = "no space left on the device"
    else:
      raise
    raise workdir_lib.WorkdirError(
        f"cannot write the checkpoint {where}: {reason}; free space and "
        "rerun to resume from the last checkpoint written") from e


def save(mngr: ocp.CheckpointManager, step: int, state, *, wait: bool = False):
  """Saves `state` at `step` (asynchronously unless `wait`).

  A state replicated over the devices of a single process is saved from one
  host copy: orbax would otherwise slice every array once per device (for a
  width-8 ResNet-50 on 8 CPU devices, 7 s a save against 1 s). Restoring
  places it back with the target's shardings, bit for bit.

  Raises:
    workdir.WorkdirError: the checkpoint cannot be written (full disk, ...),
      naming its folder.
  """
  if jax.process_count() == 1 and all(
      getattr(x, "is_fully_replicated", True) for x in jax.tree.leaves(state)):
    state = jax.device_get(state)
  with _writing(workdir_lib.join(os.fspath(mngr.directory), str(step))):
    mngr.save(step, args=ocp.args.StandardSave(state))
    if wait:
      mngr.wait_until_finished()


def finish(mngr: ocp.CheckpointManager):
  """Waits for the last asynchronous save and closes the manager; a failed
  write is named as in `save`."""
  with _writing(os.fspath(mngr.directory)):
    mngr.wait_until_finished()
  mngr.close()
