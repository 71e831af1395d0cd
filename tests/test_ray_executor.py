"""The ROAR/KAR grid on a local Ray cluster (two workers on this machine).

The Ray grid must store what the sequential grid stores (same units, same test
accuracies: the workers get the driver's XLA_FLAGS, so they run the same
computation on the same 8 simulated CPU devices), run every unit once, retry a
task that fails and resume its unit from its checkpoint, and name the units
that fail for good.
"""

import copy
import os
import shutil
import sys

import pytest

from conftest import load_config
from roar_jax import config as config_pkg
from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import artifacts, grid, results
from roar_jax.benchmark.roar import pipeline as roar

from roar_jax.benchmark.roar import ray_executor

try:
  import ray
except ImportError:
  ray = None

needs_ray = pytest.mark.skipif(
    ray is None, reason="ray is not installed (pip install -e \".[ray]\")")

# The Ray grid's test accuracies equal the sequential grid's (not one of the
# 500 test images differs): the workers run the same XLA programs on the same 8
# simulated devices. A unit resumed from a checkpoint sees a reshuffled input
# order after it (the trainer's resume rule), so its accuracy is only close.
EXACT_TOL = 1e-6
RESUMED_TOL = 0.15


def _config():
  config = load_config("toy")
  with config.unlocked():
    config.explain.estimators = ("oracle", "random")
    config.roar.thresholds = (0.5,)
    config.roar.modes = ("kar",)
    config.roar.num_seeds = 1
    config.train.num_steps = 60
    config.train.log_every = 10
    config.train.checkpoint_every = 30
    config.data.toy.num_train = 1500
    config.data.toy.num_test = 500
  return config


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
  """The toy grid run by the sequential executor."""
  workdir = str(tmp_path_factory.mktemp("sequential"))
  config = _config()
  roar.run(config, workdir)
  return config, workdir


@pytest.fixture(scope="module")
def ray_cluster():
  # Ray workers cannot import this test module (it is not on their path):
  # ship the runners defined here by value.
  ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
  ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
           object_store_memory=100 * 2**20)
  yield ray
  ray.shutdown()
  ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _results(workdir: str) -> list[dict]:
  return [r for _, r in workdir_lib.iter_json(os.path.join(workdir,
                                                           "results"))]


def _attempts(workdir: str, name: str) -> list[str]:
  """The attempt files a runner left for unit `name`: `<name>.<attempt>`."""
  folder = os.path.join(workdir, "attempts")
  if not os.path.isdir(folder):
    return []
  return sorted(f for f in os.listdir(folder) if f.startswith(name + "."))


def _new_attempt(workdir: str, name: str) -> tuple[int, str]:
  """Numbers and creates the next attempt file of unit `name`."""
  folder = os.path.join(workdir, "attempts")
  os.makedirs(folder, exist_ok=True)
  attempt = sum(f.startswith(name + ".") for f in os.listdir(folder))
  path = os.path.join(folder, f"{name}.{attempt}")
  open(path, "w").close()
  return attempt, path


def _recording_runner(flaky_name: str, fail_at_step: int):
  """A unit runner that records each attempt and its logged steps, and whose
  first attempt at `flaky_name` dies at `fail_at_step` (after a checkpoint).
  """

  def run(config, plan, unit, source, fill):
    attempt, log = _new_attempt(plan.workdir.root, unit.name)

    def callback(step, metrics):
      del metrics
      with open(log, "a") as f:
        f.write(f"{step}\n")
      if unit.name == flaky_name and attempt == 0 and step == fail_at_step:
        raise RuntimeError(f"worker lost during {unit.name}")

    return grid.run_unit(config, plan, unit, source, fill,
                         step_callback=callback)

  return run


@needs_ray
def test_ray_grid_matches_sequential_and_retries(ray_cluster, sequential,
                                                  tmp_path):
  # (Ray starts first: its processes are then not forked from a process
  # already running JAX's threads.)
  del ray_cluster
  config, seq_workdir = sequential
  workdir = str(tmp_path / "ray")
  # Start from the sequential run's base model, rank store and fill, so that
  # only the grid differs.
  shutil.copytree(seq_workdir, workdir, ignore=shutil.ignore_patterns(
      "results", "retrain", "report", "datasets"))
  ray_config = copy.deepcopy(config)
  with ray_config.unlocked():
    ray_config.grid.executor = "ray"  # Default: 3 retries.
  units = grid.all_units(config)
  flaky = units[-1].name
  out = roar.run(ray_config, workdir,
                 run_unit=_recording_runner(flaky, fail_at_step=40))
  assert out["units"] == len(units) == 2

  seq = {grid.Unit(r["estimator"], r["mode"], r["threshold"], r["seed"]): r
         for r in _results(seq_workdir)}
  got = {grid.Unit(r["estimator"], r["mode"], r["threshold"], r["seed"]): r
         for r in _results(workdir)}
  assert set(got) == set(seq) == set(units)
  for unit in units:
    r = got[unit]
    assert r["steps"] == 60
    # Where the unit runs does not change its identity.
    assert r["config_hash"] == seq[unit]["config_hash"]
    tol = RESUMED_TOL if unit.name == flaky else EXACT_TOL
    assert abs(r["test_accuracy"] - seq[unit]["test_accuracy"]) <= tol, unit
  # The rankings still decide the outcome: keeping the oracle's half of the
  # pixels keeps the class evidence, keeping a random half mostly does not.
  acc = {u.estimator: got[u]["test_accuracy"] for u in units}
  assert acc["oracle"] > acc["random"] + 0.2

  # Every unit ran once, except the flaky one: its first attempt died at step
  # 40 and the retry resumed from the step-30 checkpoint (first logged step
  # 40, not 10).
  for unit in units:
    attempts = _attempts(workdir, unit.name)
    logged = [[int(s) for s in open(os.path.join(workdir, "attempts", a))]
              for a in attempts]
    if unit.name == flaky:
      assert len(attempts) == 2
      assert logged[0] == [10, 20, 30, 40]
      assert logged[1] == [40, 50, 60]
    else:
      assert len(attempts) == 1 and logged[0] == [10, 20, 30, 40, 50, 60]

  # A rerun finds every unit done and submits nothing.
  again = roar.run(ray_config, workdir,
                   run_unit=lambda *a: pytest.fail("unit rerun"))
  assert again["units"] == 0
  # An executor of another name is an error that names the field.
  with ray_config.unlocked():
    ray_config.grid.executor = "dask"
  with pytest.raises(ValueError, match="config.grid.executor='dask'"):
    config_pkg.validate(ray_config, "roar")


@needs_ray
def test_units_failing_every_attempt_are_named(ray_cluster, tmp_path):
  del ray_cluster
  workdir = str(tmp_path)
  config = _config()
  with config.unlocked():
    config.grid.ray_max_retries = 2
  done = grid.Unit("oracle", "kar", 0.5, 0)
  stored = {"estimator": "oracle", "mode": "kar", "threshold": 0.5, "seed": 0,
            "test_accuracy": 0.875, "steps": 60, "wall_time_s": 1.0,
            "config_hash": results.config_hash(config)}
  plan = artifacts.plan(config, workdir_lib.Workdir(workdir), [done])
  stored["fingerprint"] = plan.results[done].fingerprint
  stored["provenance"] = dict(plan.results[done].record)
  grid.write_result(plan, done, stored)
  # As written: the record with its checksum.
  stored = [r for _, r in workdir_lib.iter_json(
      os.path.join(workdir, "results"))]
  assert stored[0]["test_accuracy"] == 0.875
  bad = [grid.Unit("random", "kar", 0.5, 7), grid.Unit("oracle", "kar",
                                                        0.5, 7)]

  def broken(config, plan, unit, source, fill):
    del config, source, fill
    _new_attempt(plan.workdir.root, unit.name)
    raise ValueError(f"cannot train {unit.name}")

  with pytest.raises(ray_executor.GridFailedError) as e:
    ray_executor.run_units(config, workdir, [done] + bad, run_unit=broken)
  assert sorted(e.value.failures) == sorted(u.name for u in bad)
  for unit in bad:
    assert unit.name in str(e.value)
    # One attempt and ray_max_retries retries each.
    assert len(_attempts(workdir, unit.name)) == 3
    assert not workdir_lib.exists(workdir_lib.Workdir(workdir).result(
        unit.name))
  assert "cannot train" in str(e.value)
  # A unit with a stored result is not run again: its task returns the record.
  assert not _attempts(workdir, done.name)
  assert [r for _, r in workdir_lib.iter_json(
      os.path.join(workdir, "results"))] == stored


def test_task_options_from_config():
  config = _config()
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu", "HOME": "/root"}
  # CPU tasks: the driver's JAX set-up travels with them.
  assert ray_executor.worker_env_vars(config, env) == {
      "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
      "JAX_PLATFORMS": "cpu"}
  options = ray_executor.task_options(config)
  assert options["runtime_env"]["env_vars"]["XLA_FLAGS"] == os.environ[
      "XLA_FLAGS"]
  assert options["num_gpus"] == 0.0 and "max_calls" not in options
  with config.unlocked():
    config.grid.ray_num_gpus = 1.0
    config.grid.ray_max_retries = 5
    config.grid.ray_env_vars = {"XLA_PYTHON_CLIENT_MEM_FRACTION": ".9"}
  # GPU tasks keep their node's own devices; explicit variables are added.
  assert ray_executor.worker_env_vars(config, env) == {
      "XLA_PYTHON_CLIENT_MEM_FRACTION": ".9"}
  options = ray_executor.task_options(config)
  assert options["num_gpus"] == 1.0 and options["num_cpus"] == 1.0
  assert options["max_retries"] == 5 and options["retry_exceptions"] is True
  assert "resources" not in options
  # An accelerator task's worker exits after its unit, freeing the devices.
  assert options["max_calls"] == 1
  with config.unlocked():
    config.grid.ray_num_gpus = 0.0
    config.grid.ray_resources = {"TPU": 4}
  options = ray_executor.task_options(config)
  assert options["resources"] == {"TPU": 4.0} and options["max_calls"] == 1
  assert ray_executor.uses_accelerator(config)
  with config.unlocked():
    config.grid.ray_resources = {"TPU": 0}
  with pytest.raises(ValueError, match=r"config.grid.ray_resources\['TPU'\]"):
    ray_executor.task_options(config)
  with config.unlocked():
    config.grid.ray_resources = {}
    config.grid.ray_max_retries = -1
  with pytest.raises(ValueError, match="config.grid.ray_max_retries"):
    ray_executor.task_options(config)


@needs_ray
def test_ray_accepts_the_task_options():
  config = _config()
  for gpus, resources in ((0.0, {}), (1.0, {}), (0.0, {"TPU": 4})):
    with config.unlocked():
      config.grid.ray_num_gpus = gpus
      config.grid.ray_resources = resources
    task, options = ray_executor.remote_task(ray, ray_executor.task_options(
        config))
    assert "max_calls" not in options
    task.options(name="roar unit", **options)  # Ray validates them here.


def test_missing_ray_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails.
  with pytest.raises(ImportError, match=r'pip install -e "\.\[ray\]"'):
    ray_executor.import_ray()


def test_no_cluster_names_the_address_field():

  class NoCluster:
    """Stands in for `ray` where no cluster runs."""

    @staticmethod
    def is_initialized():
      return False

    @staticmethod
    def init(address):
      raise ConnectionError(f"Could not find any running Ray instance at "
                            f"{address}")

  config = _config()
  with pytest.raises(ConnectionError,
                     match=r"config.grid.ray_address='auto'.*ray start"):
    ray_executor._connect(NoCluster, config)  # pylint: disable=protected-access
