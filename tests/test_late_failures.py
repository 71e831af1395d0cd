"""Late failures made one line, and fingerprints that invalidate no more
than changed: a full disk under a checkpoint, a bit-flipped rank shard, an
IDX file with a bad magic number, a lock held by another program, a rank
store's options, a fill dropped from the grid, autograph's temp files."""

import errno
import gzip
import os
import signal
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import data_config
from conftest import load_config
from roar_jax import training
from roar_jax import workdir as workdir_lib
from roar_jax import workdir_lock
from roar_jax.benchmark.roar import artifacts
from roar_jax.benchmark.roar import grid
from roar_jax.benchmark.roar import pipeline
from roar_jax.data import rank_store
from roar_jax.data import source_protocol
from roar_jax.data import sources
from roar_jax.data.errors import DataError

TESTS = os.path.dirname(os.path.abspath(__file__))


def _tiny_source():
  rng = np.random.default_rng(0)
  splits = {s: (rng.integers(0, 255, (n, 8, 8, 3)).astype(np.uint8),
                np.arange(n) % 2) for s, n in (("train", 32), ("test", 16))}
  return source_protocol.ArraySource(source_protocol.DatasetInfo(
      "tiny", 2, (8, 8, 3), {"train": 32, "test": 16}), splits)


def test_full_disk_while_writing_a_checkpoint_is_one_line(tmp_path,
                                                          monkeypatch):
  config = load_config("toy")
  with config.unlocked():
    config.data.image_size = 8
    config.model.small_cnn.width = 4
    config.train.batch_size = 8
    config.train.num_steps = 4
    config.train.checkpoint_every = 2

  def full(self, step, *args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(ocp.CheckpointManager, "save", full)
  with pytest.raises(workdir_lib.WorkdirError) as error:
    training.train_and_evaluate(config, str(tmp_path), source=_tiny_source())
  assert str(error.value) == (
      f"cannot write the checkpoint {tmp_path}/checkpoints/2: no space left "
      "on the device; free space and rerun to resume from the last "
      "checkpoint written")


def test_bit_flipped_rank_shard_is_named_or_read_whole(tmp_path):
  store = rank_store.RankStore(str(tmp_path))
  levels = np.random.default_rng(0).integers(0, 100, (4, 8, 8), np.uint8)
  path = store.write_shard("gradient", "test", 0, 1, np.arange(4), levels)
  data = open(path, "rb").read()
  named = 0
  for i in range(len(data)):
    flipped = bytearray(data)
    flipped[i] ^= 0x10
    with open(path, "wb") as f:
      f.write(bytes(flipped))
    try:
      read = rank_store.RankStore(str(tmp_path)).read("gradient", "test")
    except workdir_lib.WorkdirError as e:
      assert str(e).startswith(f"{path}: corrupt rank-store shard (")
      assert "\n" not in str(e)
      named += 1
    else:  # A flip in zip metadata that no reader uses (a timestamp).
      np.testing.assert_array_equal(read, levels)
  # The zip CRC-32 catches every flip in the data and the .npy headers.
  assert named >= len(data) * 3 // 4


def _idx_dir(tmp_path) -> str:
  raw = tmp_path / "idx"
  raw.mkdir()
  folder = os.path.join(TESTS, "fixtures", "fashion-mnist-mini")
  for name in os.listdir(folder):
    with gzip.open(os.path.join(folder, name), "rb") as f:
      (raw / name.removesuffix(".gz")).write_bytes(f.read())
  return str(raw)


@pytest.mark.parametrize("name, magic", [
    ("train-images-idx3-ubyte", b"\x00\x00\x08\x02"),  # 2 dimensions.
    ("train-images-idx3-ubyte", b"\x00\x00\x0d\x03"),  # float32.
    ("train-labels-idx1-ubyte", b"\x00\x00\x08\x03"),
    ("t10k-labels-idx1-ubyte", b"\x08\x00\x08\x01"),
])
def test_idx_file_with_a_bad_magic_number_says_so(tmp_path, name, magic):
  raw = _idx_dir(tmp_path)
  target = os.path.join(raw, name)
  data = open(target, "rb").read()
  with open(target, "wb") as f:
    f.write(magic + data[4:])
  with pytest.raises(DataError) as error:
    sources.get_source(data_config(name="fashion_mnist", path=raw,
                                    data_dir=str(tmp_path / "tfds")))
  message = str(error.value)
  assert message.startswith(f"{target}: ") and "\n" not in message
  assert f"bad magic number {magic.hex()}" in message
  assert len(message) < 250


def test_lock_of_a_live_unrelated_process_says_how_to_clear_it(tmp_path):
  other = subprocess.Popen([sys.executable, "-c", "import time; "
                            "time.sleep(60)"])
  try:
    wd = workdir_lib.Workdir(str(tmp_path))
    workdir_lib.write_json(wd.lock_file, {
        "host": os.uname().nodename, "pid": other.pid, "since": "then"})
    with pytest.raises(workdir_lib.WorkdirError) as error:
      workdir_lock.Lock(wd).acquire()
    assert str(error.value).endswith(
        f"if no run uses it (that process is another program), delete "
        f"{wd.lock_file}")
  finally:
    other.kill()
    other.wait()


def _explain_config(estimators, **options):
  config = load_config("toy")
  with config.unlocked():
    config.explain.estimators = estimators
    for k, v in options.items():
      config.explain.methods[k] = v
  return config


def test_rank_store_fingerprints_hold_only_the_options_read(tmp_path):
  wd = str(tmp_path)
  before = grid.plan_of(_explain_config(("gradient", "random")), wd).ranks
  config = _explain_config(("gradient", "random", "occlusion"),
                           occlusion_window=4)
  after = grid.plan_of(config, wd).ranks
  for est in ("gradient", "random"):
    assert after[est].fingerprint == before[est].fingerprint
  assert "explain.methods.occlusion_window" in after["occlusion"].record[
      "fields"]
  # smooth_sigma: random_smooth's and every blur.<e>'s, no one else's.
  names = ("gradient", "random", "random_smooth", "blur.gradient",
           "random_smooth.gradient")
  config = load_config("toy")
  with config.unlocked():
    config.explain.estimators = names
  one = grid.plan_of(config, wd).ranks
  with config.unlocked():
    config.explain.smooth_sigma = 5.0
  two = grid.plan_of(config, wd).ranks
  changed = {e for e in names if one[e].fingerprint != two[e].fingerprint}
  assert changed == {"random_smooth", "blur.gradient"}
  # The matched control's input is its estimator's rank store.
  assert two["random_smooth.gradient"].record["inputs"] == {
      "ranks": two["gradient"].fingerprint}
  fields = artifacts.explain_fields(config, "sg.integrated_gradients")
  assert {"explain.num_samples", "explain.noise_scale",
          "explain.ig_steps"} <= set(fields)


@pytest.mark.parametrize("dropped", ["channel_mean", "noisy_linear"])
def test_dropping_a_fill_narrows_the_grid(tmp_path, dropped):
  root = str(tmp_path)
  config = load_config("toy")
  with config.unlocked():
    config.roar.thresholds, config.roar.num_seeds = (0.5,), 1
    config.roar.modes = ("roar",)
    config.roar.fill = ("channel_mean", "noisy_linear")
  plan = grid.plan_of(config, root)
  for artifact in [plan.base, plan.channel_mean, *plan.ranks.values(),
                   *plan.results.values(),
                   *pipeline.metric_artifacts(config, plan)]:
    if artifact.is_folder:
      artifact.write()
    else:
      workdir_lib.write_json(artifact.path,
                             {"provenance": dict(artifact.record)})
  kept = "noisy_linear" if dropped == "channel_mean" else "channel_mean"
  with config.unlocked():
    config.roar.fill = kept
  plan = pipeline.open_run(config, root, mode="roar")  # Not refused.
  assert plan.units and all(grid.is_done(plan, u) for u in plan.units)
  assert {u.fill for u in plan.units} == {kept}


_KILLED = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from conftest import load_config
from roar_jax.data import degradation, pipeline, sources
config = load_config("toy")
with config.unlocked():
  config.data.toy.num_train, config.data.toy.num_test = 64, 32
  config.data.data_dir = {data!r}
source = sources.get_source(config.data)
next(pipeline.train_iterator(source, config.data, global_batch_size=16,
                             seed=0))
next(iter(pipeline.eval_iterator(source, config.data, "test",
                                 global_batch_size=16)))
pipeline.channel_mean_std(source)
degradation.channel_mean(source)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_run_leaves_no_autograph_files(tmp_path):
  temp = tmp_path / "temp"
  temp.mkdir()
  script = _KILLED.format(tests=TESTS, data=str(tmp_path / "data"))
  done = subprocess.run([sys.executable, "-c", script], capture_output=True,
                        env={**os.environ, "TMPDIR": str(temp)}, timeout=300)
  assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
  assert [n for n in os.listdir(temp) if "autograph" in n] == []


