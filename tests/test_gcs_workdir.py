"""gs:// workdirs, for real, against a GCS emulator on 127.0.0.1.

The workdir layer (`etils.epath`) reaches GCS through TensorFlow's file
system by default; that client's endpoint is compiled in and cannot be
pointed at an emulator, so the test switches epath to its fsspec backend
(`EPATH_USE_TF=false`, gcsfs), which honours `STORAGE_EMULATOR_HOST`, as do
orbax's tensorstore (`TENSORSTORE_GCS_HTTP_URL`) and tensorboardX's
google-cloud-storage client. What TensorFlow itself reads or writes on gs://
(TFRecord datasets of `degrade='write'`, TFDS data_dir) is the one path not
covered here.
"""

import os
import socket
import subprocess
import sys

import pytest

from roar_jax import workdir as workdir_lib

emulator = pytest.importorskip(
    "gcp_storage_emulator.server",
    reason="pip install -e '.[test]' installs the GCS emulator")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "roar-test"
_OVERRIDES = (
    "--config.explain.estimators=('oracle','random')",
    "--config.data.toy.num_train=512", "--config.data.toy.num_test=128",
    "--config.train.num_steps=20", "--config.train.checkpoint_every=20",
    "--config.train.eval_batch_size=64", "--config.explain.batch_size=64",
    "--config.explain.shard_size=256", "--config.roar.thresholds=(0.5,)",
    "--config.roar.modes=('roar',)", "--config.roar.num_seeds=1",
    "--config.metrics.with_roar=False",
)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs():
  """An in-memory GCS emulator, and the environment that points at it."""
  port = _free_port()
  server = emulator.create_server("127.0.0.1", port, in_memory=True,
                                  default_bucket=BUCKET)
  server.start()
  url = f"http://127.0.0.1:{port}"
  env = {**os.environ, "EPATH_USE_TF": "false", "STORAGE_EMULATOR_HOST": url,
         "TENSORSTORE_GCS_HTTP_URL": url,
         "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
         "GOOGLE_CLOUD_PROJECT": "roar-test"}
  yield env
  server.stop()


def _roar(workdir: str, env) -> subprocess.CompletedProcess:
  """The toy grid; rerun (it resumes) when the emulator garbles a reply.

  The emulator now and then sends an object generation that tensorstore
  cannot parse ("Malformed StorageGeneration") in the middle of a checkpoint
  save; GCS itself does not. The rerun resumes from what was stored, which is
  what a user does after any interruption.
  """
  for _ in range(3):
    out = subprocess.run(
        [sys.executable, "-m", "roar_jax.main", "--config=configs/toy.py",
         f"--workdir={workdir}", "--mode=roar", *_OVERRIDES],
        capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    if out.returncode == 0 or "Malformed StorageGeneration" not in out.stderr:
      return out
  return out


def _read(path: str, env) -> str:
  """A file's text, read through the workdir layer in a fresh process."""
  out = subprocess.run(
      [sys.executable, "-c",
       "import sys; from roar_jax import workdir as w; "
       "sys.stdout.write(w.read_bytes(sys.argv[1]).decode())", path],
      capture_output=True, text=True, timeout=120, env=env, check=True)
  return out.stdout


@pytest.mark.slow
def test_toy_roar_on_gcs_gives_the_local_results(gcs, tmp_path):
  local = _roar(str(tmp_path / "local"), gcs)
  assert local.returncode == 0, local.stderr[-2000:]
  remote = f"gs://{BUCKET}/run"
  out = _roar(remote, gcs)
  assert out.returncode == 0, out.stderr[-2000:]
  assert not os.path.exists(os.path.join(REPO, "gs:"))  # No local ./gs:/...
  expected = (tmp_path / "local" / "report" / "results.csv").read_text()
  assert _read(f"{remote}/report/results.csv", gcs) == expected
  summary = _read(f"{remote}/report/summary.md", gcs)
  assert "2 retrains" in summary
  # The base model's checkpoint, the rank store and TensorBoard are there.
  listing = subprocess.run(
      [sys.executable, "-c",
       "import sys, gcsfs; "
       "print('\\n'.join(gcsfs.GCSFileSystem().find(sys.argv[1])))",
       remote], capture_output=True, text=True, timeout=120, env=gcs,
      check=True).stdout
  for part in ("run/base/checkpoints/20/", "/ranks/oracle/test-00000-of-",
               "/base/tensorboard/events.out.tfevents",
               "/base/provenance.json", "/config.json"):
    assert part in listing, part
  # A rerun on GCS does no work and rewrites the same report.
  again = _roar(remote, gcs)
  assert again.returncode == 0, again.stderr[-2000:]
  assert "2 finished, 0 to run" in again.stderr
  assert _read(f"{remote}/report/results.csv", gcs) == expected


def test_workdir_layer_round_trips_on_gcs(gcs):
  code = f"""
import json
from roar_jax import workdir as w
from roar_jax import workdir_lock
root = "gs://{BUCKET}/layer"
w.write_json(root + "/a/b.json", {{"x": [1, 2]}})
assert w.read_json(root + "/a/b.json") == {{"x": [1, 2]}}
assert w.listdir(root) == ["a"] and w.exists(root + "/a/b.json")
lock = workdir_lock.Lock(w.Workdir(root))
lock.acquire()
try:
  workdir_lock.Lock(w.Workdir(root)).acquire()
except w.WorkdirError as e:
  print("refused:", e)
lock.release()
assert not w.exists(root + "/lock.json")
"""
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=120, env=gcs)
  assert out.returncode == 0, out.stderr[-2000:]
  assert f"refused: gs://{BUCKET}/layer is in use by process" in out.stdout
  assert workdir_lib.is_remote(f"gs://{BUCKET}/layer")
