"""Test set-up: several simulated CPU devices, so that sharded code is exercised.

The flag must be set before JAX initializes its backends, hence at import time of
this conftest, which pytest loads before any test module.
"""

import os
import pathlib

# 8 simulated devices share 2 cores: on a loaded machine the threads of one
# collective can take longer than XLA's default 40 s to meet, which aborts the
# process, so the rendezvous timeouts are raised.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
    "--xla_cpu_collective_call_terminate_timeout_seconds=900 "
    "--xla_cpu_collective_timeout_seconds=900")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
FIXTURES = REPO / "tests" / "fixtures"


# The longest modules, longest first (about 190, 180, 170, 160, 155, 140,
# 90, 85 and 70 s on the 2-core machine, from suite runs and runs of the
# module alone). pytest.ini turns off
# xdist's reordering by test count, so `-n 2 --dist loadscope` deals these
# out first, alternately, and the short modules fill in after them: no
# worker is left running a long module alone at the end.
SLOW_MODULES = ("test_paper_pipeline.py", "test_multiprocess.py",
                "test_training.py", "test_ray_executor.py",
                "test_sanity_run.py", "test_roar_e2e.py",
                "test_gcs_workdir.py", "test_sanity_cifar.py",
                "test_saliency_lecture.py")


def pytest_collection_modifyitems(items):
  """Puts the SLOW_MODULES first, in that order (a stable sort: each
  module's own tests, and the other modules, keep their order)."""
  rank = {name: i for i, name in enumerate(SLOW_MODULES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def load_config(name: str):
  """`get_config()` of configs/<name>.py, as --config=configs/<name>.py gives."""
  from roar_jax.config import defaults as config_lib  # pylint: disable=g-import-not-at-top
  return config_lib.load(name)


@pytest.fixture(scope="session")
def shared_data():
  """../shared/data, or a skip that says why the full-data test cannot run."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"full datasets not found at {SHARED_DATA} (CI has them)")
  return SHARED_DATA


@pytest.fixture(scope="module")
def fast_compiles():
  """XLA without most optimizations, for modules that compile far more than
  they run (a ResNet's initializer takes minutes to optimize on a CPU)."""
  import jax  # pylint: disable=g-import-not-at-top
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)


def data_config(**fields):
  """`config.data` with the defaults, and `fields` set."""
  from roar_jax.config import defaults  # pylint: disable=g-import-not-at-top
  c = defaults.base_config().data
  for k, v in fields.items():
    c[k] = v
  return c
