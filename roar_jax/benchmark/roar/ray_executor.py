"""The ROAR/KAR retraining grid on a Ray cluster: one task per unit.

`--config.grid.executor=ray` sends every unfinished (estimator, mode,
threshold, seed) unit to a running Ray cluster (KubeRay on GKE, Ray on Cloud
TPU VMs or GPU hosts) as one task that asks for `config.grid.ray_num_gpus`
GPUs, `ray_num_cpus` CPUs and the custom resources of `ray_resources` (one TPU
host: `{'TPU': 4}`). Each task rebuilds the dataset from the config, reads the
stored fill, and runs `grid.run_unit`, which resumes the unit from its own
checkpoints; its result file is its completion marker. So a lost worker costs
only the unit it was running: Ray runs the task again (up to
`ray_max_retries` times, for exceptions too) and the new attempt continues
from the unit's last checkpoint, while finished units are never run twice.

The workdir must be storage every Ray node shares (NFS, Filestore, GCS FUSE):
the workers read the rank store and write checkpoints and results there.
Every node needs roar_jax installed (the cluster's image), like the driver:

  pip install -e ".[ray]"
  ray start --head                      # or a KubeRay cluster
  python -m roar_jax.main --config=configs/cifar10.py --workdir=/shared/run \
      --mode=roar --config.grid.executor=ray --config.grid.ray_num_gpus=1
"""

import os
from typing import Any, Callable, Mapping, Sequence

import tqdm
from absl import logging

from roar_jax import progress_eta
from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import grid
from roar_jax.benchmark.roar import artifacts as artifacts_lib
from roar_jax.data import sources

UnitRunner = Callable[..., dict[str, Any]]

# Environment variables that decide how JAX (and TensorFlow's logging) set up
# on a CPU worker: forwarded so that CPU workers see the devices the driver
# sees (tests simulate several CPU devices through XLA_FLAGS).
CPU_ENV_VARS = ("XLA_FLAGS", "JAX_PLATFORMS", "JAX_ENABLE_X64",
                "TF_CPP_MIN_LOG_LEVEL")


def import_ray():
  """The `ray` module, or an ImportError that says how to install it."""
  try:
    import ray  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(
        "config.grid.executor='ray' needs Ray, which is not installed: "
        "pip install -e \".[ray]\"") from None
  return ray


def _as_dict(value) -> dict[str, Any]:
  if value is None:
    return {}
  return dict(value.to_dict() if hasattr(value, "to_dict") else value)


def uses_accelerator(config) -> bool:
  """Whether a unit's task asks for a GPU or a custom (e.g. TPU) resource."""
  gc = config.grid
  return (float(gc.get("ray_num_gpus", 0) or 0) > 0
          or bool(_as_dict(gc.get("ray_resources"))))


def worker_env_vars(config, environ: Mapping[str, str] | None = None
                    ) -> dict[str, str]:
  """The environment variables every task of the grid runs with.

  A CPU-only task inherits the driver's JAX set-up (CPU_ENV_VARS), so that a
  worker has the devices the driver has and computes what the driver would.
  A task on an accelerator keeps its node's own set-up: the driver (often a
  CPU head node) knows nothing of the worker's devices. `config.roar.
  ray_env_vars` is added in both cases.

  Args:
    config: the experiment config.
    environ: the driver's environment; default os.environ.

  Returns:
    {name: value}.
  """
  environ = os.environ if environ is None else environ
  env = {}
  if not uses_accelerator(config):
    env = {k: environ[k] for k in CPU_ENV_VARS if k in environ}
  extra = _as_dict(config.grid.get("ray_env_vars"))
  env.update({str(k): str(v) for k, v in extra.items()})
  return env


def task_options(config) -> dict[str, Any]:
  """The Ray options of one unit's task, from `config.grid.ray_*`.

  Args:
    config: the experiment config.

  Returns:
    Keyword arguments of `.options()` of a remote function, plus `max_calls`
    (which `ray.remote` takes) for tasks on accelerators.
  """
  gc = config.grid
  num_cpus = float(gc.get("ray_num_cpus", 1))
  num_gpus = float(gc.get("ray_num_gpus", 0) or 0)
  max_retries = int(gc.get("ray_max_retries", 3))
  resources = {str(k): float(v)
               for k, v in _as_dict(gc.get("ray_resources")).items()}
  if num_cpus < 0:
    raise ValueError(f"config.grid.ray_num_cpus={num_cpus} must be >= 0")
  if num_gpus < 0:
    raise ValueError(f"config.grid.ray_num_gpus={num_gpus} must be >= 0")
  if max_retries < 0:
    raise ValueError(f"config.grid.ray_max_retries={max_retries} must be "
                     ">= 0")
  for name, amount in resources.items():
    if amount <= 0:
      raise ValueError(f"config.grid.ray_resources[{name!r}]={amount} must be "
                       "> 0")
  options = {"num_cpus": num_cpus, "num_gpus": num_gpus,
             "max_retries": max_retries, "retry_exceptions": True}
  if resources:
    options["resources"] = resources
  if uses_accelerator(config):
    # A worker process that ran a unit still holds its devices (JAX keeps its
    # GPU memory, and a TPU host admits one process): it exits after each
    # unit, so that the next unit on that node can take them.
    options["max_calls"] = 1
  env = worker_env_vars(config)
  if env:
    options["runtime_env"] = {"env_vars": env}
  return options


def remote_task(ray, options: Mapping[str, Any]):
  """The remote function of a unit's task, and the options it still takes.

  Args:
    ray: the ray module.
    options: `task_options(config)`.

  Returns:
    (remote function of run_unit_task, keyword arguments for its
    `.options()`): Ray takes `max_calls` only when the function is made.
  """
  options = dict(options)
  max_calls = options.pop("max_calls", None)
  if max_calls:
    return ray.remote(max_calls=max_calls)(run_unit_task), options
  return ray.remote(run_unit_task), options


def run_unit_task(config, workdir: str, unit: grid.Unit,
                  run_unit: UnitRunner = grid.run_unit) -> dict[str, Any]:
  """What one task runs on a Ray worker: one unit, from the config alone.

  A retried task whose earlier attempt already stored the result returns that
  result instead of training again; one interrupted mid-training resumes from
  the unit's checkpoints (grid.run_unit does).

  Args:
    config: the experiment config.
    workdir: the experiment workdir (shared storage).
    unit: the unit to run.
    run_unit: runs the unit, as `run_unit(config, plan, unit, source,
      channel_mean)`.

  Returns:
    The unit's result record.
  """
  plan = artifacts_lib.plan(config, workdir_lib.as_workdir(workdir), [unit])
  if grid.is_done(plan, unit):
    return workdir_lib.read_json(plan.results[unit].path)
  source = sources.get_source(config.data)
  # The driver computed and stored the channel mean before submitting; this
  # reads it back.
  fill = grid.channel_mean(config, plan, source)
  return run_unit(config, plan, unit, source, fill)


class GridFailedError(RuntimeError):
  """Some units of the grid failed on every attempt."""

  def __init__(self, failures: Mapping[str, BaseException], total: int,
               max_retries: int):
    self.failures = dict(failures)
    names = ", ".join(sorted(self.failures))
    first = self.failures[min(self.failures)]
    super().__init__(
        f"{len(self.failures)} of {total} ROAR/KAR units failed after "
        f"{max_retries} retries: {names}. Rerun the same command to retry "
        f"them (finished units are kept). First error ({min(self.failures)}): "
        f"{first}")


def _connect(ray, config) -> bool:
  """Connects to the cluster unless already connected; True if it connected."""
  if ray.is_initialized():
    return False
  address = config.grid.get("ray_address") or "auto"
  try:
    ray.init(address=address)
  except ConnectionError as e:
    raise ConnectionError(
        f"config.grid.ray_address={address!r}: no Ray cluster found there "
        f"({e}). Start one (`ray start --head`, or a KubeRay cluster) or set "
        "config.grid.ray_address") from None
  return True


def _warn_if_unschedulable(ray, options: Mapping[str, Any]):
  """Warns when the whole cluster has less than one task asks for.

  Not an error: an autoscaling cluster (KubeRay) adds nodes on demand; until
  then the tasks wait.
  """
  wanted = {"CPU": options["num_cpus"], "GPU": options["num_gpus"],
            **options.get("resources", {})}
  have = ray.cluster_resources()
  short = {k: v for k, v in wanted.items() if v > have.get(k, 0.0)}
  if short:
    logging.warning(
        "the Ray cluster has less than a unit's task asks for (%s; the "
        "cluster has %s): the tasks wait until such nodes join", short,
        {k: have[k] for k in sorted(have) if k in ("CPU", "GPU", "TPU")
         or k in wanted})


def _collect(ray, refs, plan, eta: progress_eta.Eta | None = None
             ) -> tuple[dict[Any, Any], dict[str, Any]]:
  """Waits for every task; returns (records by unit, errors by unit name).

  After each finished unit, logs the grid's progress (`eta`: done/total and
  time left; a failed unit is not done).
  """
  eta = eta or progress_eta.Eta(len(refs))
  records, failures = {}, {}
  pending = list(refs)
  with tqdm.tqdm(total=len(refs), desc="retrain units (ray)",
                 disable=None) as bar:
    try:
      while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
          unit = refs[ref]
          try:
            record = ray.get(ref)
          except ray.exceptions.RayError as e:
            failures[unit.name] = e
            logging.error("unit %s failed: %s", unit.name, e)
          else:
            records[unit] = record
            if not grid.is_done(plan, unit):
              # The worker's files are not visible here: keep the result
              # anyway, so that the report has it and a rerun skips it.
              grid.write_result(plan, unit, record)
            logging.info("unit %s: test accuracy %.4f", unit.name,
                         record["test_accuracy"])
            eta.update(1)
          logging.info("roar: %s%s", eta.describe("unit"),
                       f" ({len(failures)} failed)" if failures else "")
          bar.update(1)
          bar.set_postfix(failed=len(failures))
    except KeyboardInterrupt:
      # Units that already run keep their checkpoints; cancel the rest.
      for ref in pending:
        ray.cancel(ref)
      raise
  return records, failures


def run_units(config, workdir: str, units: Sequence[grid.Unit], *,
              run_unit: UnitRunner = grid.run_unit,
              eta: progress_eta.Eta | None = None) -> list[dict[str, Any]]:
  """Runs the units as Ray tasks and waits for all of them.

  Connects to `config.grid.ray_address` (or the cluster `ray.init('auto')`
  finds) unless Ray is already initialized in this process, submits one task
  per unit, and shows progress as tasks finish. A unit whose task fails on
  every attempt does not stop the others; once all have ended, the failed
  ones are reported together.

  Args:
    config: the experiment config (`config.grid.ray_*` set the task options).
    workdir: the experiment workdir, on storage every node shares.
    units: the units to run (normally those without a result yet).
    run_unit: what each task runs for its unit (must be picklable).
    eta: the grid's progress, logged as units finish (default: these units
      alone).

  Returns:
    The records of the units, in the order of `units`.

  Raises:
    GridFailedError: naming every unit that failed after its retries.
  """
  import jax  # pylint: disable=g-import-not-at-top
  ray = import_ray()
  if jax.process_count() > 1:
    raise ValueError(
        "config.grid.executor='ray' drives the grid from one process; run the "
        "driver without --multihost (the Ray tasks get their own devices)")
  if not units:
    return []
  task, options = remote_task(ray, task_options(config))
  connected = _connect(ray, config)
  try:
    _warn_if_unschedulable(ray, options)
    plan = artifacts_lib.plan(config, workdir_lib.as_workdir(workdir), units)
    # Tasks are named after their units, as the Ray dashboard lists them.
    refs = {task.options(name=f"roar {u.name}", **options).remote(
        config, workdir, u, run_unit): u for u in units}
    logging.info("submitted %d units to Ray (%s per task)", len(refs),
                 {k: v for k, v in options.items() if k != "runtime_env"})
    records, failures = _collect(ray, refs, plan, eta)
  finally:
    if connected:
      ray.shutdown()
  if failures:
    raise GridFailedError(failures, len(units), options["max_retries"])
  return [records[u] for u in units]
