"""The trainer: accuracy on toy data, sharded == one device, resume, errors."""

import contextlib
import copy
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from conftest import REPO, load_config
from roar_jax import training
from roar_jax import workdir as workdir_lib
from roar_jax.config import validation as validate
from roar_jax.data import source_protocol as source_lib
from roar_jax.training import optimizers


def _toy(**train):
  config = load_config("toy")
  with config.unlocked():
    for k, v in train.items():
      config.train[k] = v
  return config


@contextlib.contextmanager
def _config_flag(name, value):
  old = jax.config.values[name]
  jax.config.update(name, value)
  try:
    yield
  finally:
    jax.config.update(name, old)


def _losses(config, workdir, mesh=None):
  losses = {}
  result = training.train_and_evaluate(
      config, str(workdir), mesh=mesh,
      step_callback=lambda step, m: losses.__setitem__(step, m["loss"]))
  return losses, result


def test_toy_reaches_accuracy_far_above_chance(tmp_path):
  # The full toy config; an eval batch that does not divide the 1000 test
  # images checks that the padded last batch is scored and masked.
  config = _toy(eval_batch_size=96)
  result = training.train_and_evaluate(config, str(tmp_path))
  assert result["num_test_examples"] == config.data.toy.num_test
  assert result["steps"] == config.train.num_steps
  # 4 classes: chance is 25%.
  assert result["test_accuracy"] > 0.9, result


def test_eight_devices_and_one_device_agree(tmp_path):
  assert jax.device_count() == 8
  config = _toy(num_steps=12, log_every=4, checkpoint_every=0)
  one = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
  sharded, r8 = _losses(config, tmp_path / "eight")
  single, r1 = _losses(config, tmp_path / "one", mesh=one)
  assert sorted(sharded) == [4, 8, 12]
  # Same data, same initialization: the losses agree up to float reduction
  # order across devices (relative 1e-4).
  np.testing.assert_allclose([sharded[s] for s in (4, 8, 12)],
                             [single[s] for s in (4, 8, 12)], rtol=1e-4)
  assert abs(r8["test_accuracy"] - r1["test_accuracy"]) <= 0.01


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path):
  config = _toy(num_steps=30, log_every=5, checkpoint_every=10)

  def crash(step, metrics):
    del metrics
    if step == 15:
      raise RuntimeError("simulated failure")

  with pytest.raises(RuntimeError, match="simulated failure"):
    training.train_and_evaluate(config, str(tmp_path), step_callback=crash)
  steps = []
  result = training.train_and_evaluate(
      config, str(tmp_path), step_callback=lambda s, m: steps.append(s))
  # The second run starts after the step-10 checkpoint, not from scratch and
  # not after step 15 (whose state was never saved).
  assert steps == [15, 20, 25, 30]
  assert result["steps"] == 30
  # A finished run only evaluates.
  again = training.train_and_evaluate(
      config, str(tmp_path), step_callback=lambda s, m: steps.append(s))
  assert steps == [15, 20, 25, 30]
  assert again["test_accuracy"] == result["test_accuracy"]


def _flip_a_byte(folder):
  """Flips one bit in the middle of the largest file under `folder`."""
  files = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
  path = max(files, key=os.path.getsize)
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0x10
  with open(path, "wb") as f:
    f.write(bytes(data))


def test_base_model_is_the_reported_one_or_named(tmp_path):
  config = _toy(num_steps=20, log_every=10, checkpoint_every=10)
  result = training.train_and_evaluate(config, str(tmp_path))
  state = training.load_state(config, str(tmp_path))
  assert training.params_checksum(state) == result["params_checksum"]
  folder = tmp_path / "checkpoints"
  _flip_a_byte(folder / "20")
  with pytest.raises(workdir_lib.WorkdirError, match=str(folder)):
    training.load_state(config, str(tmp_path))
  shutil.rmtree(folder / "20")
  # Not silently the older checkpoint: the reported step is missing.
  with pytest.raises(workdir_lib.WorkdirError,
                     match=r"step 20, whose metrics were reported, is "
                     r"missing \(there are steps \[10\]\)"):
    training.load_state(config, str(tmp_path))


def test_nan_loss_stops_with_a_clear_error(tmp_path):
  config = _toy(num_steps=20, log_every=5, optimizer="sgd",
                learning_rate=1e12)
  with pytest.raises(FloatingPointError, match="learning_rate"):
    training.train_and_evaluate(config, str(tmp_path))


@pytest.mark.parametrize("name,num_classes", [("imagenet_resnet50", 1000),
                                              ("food101_resnet50", 101)])
def test_resnet50_configs_run_two_steps(tmp_path, name, num_classes):
  config = load_config(name)
  validate.validate(config)
  # The paper's schedule: linear warm-up over 5 epochs to base x batch/256,
  # then x0.1 at epochs 30, 60 and 80.
  sched = optimizers.learning_rate_schedule(config.train)
  peak = config.train.learning_rate
  w = config.train.warmup_steps
  assert float(sched(0)) == 0.0
  assert float(sched(w // 2)) == pytest.approx(peak / 2, rel=1e-3)
  assert float(sched(w)) == pytest.approx(peak)
  d30, d60, _ = config.train.decay_steps
  assert float(sched(d30 + 1)) == pytest.approx(peak * 0.1)
  assert float(sched(d60 + 1)) == pytest.approx(peak * 0.01)
  assert config.train.nesterov and config.train.label_smoothing == 0.1
  with config.unlocked():
    config.data.image_size = 32
    config.data.eval_resize = 36
    config.train.batch_size = 8
    config.train.eval_batch_size = 8
    config.train.num_steps = 2
    config.model.resnet50.width = 8
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (24, 40, 48, 3), dtype=np.uint8)
  labels = rng.integers(0, num_classes, 24)
  info = source_lib.DatasetInfo(name, num_classes, (40, 48, 3),
                                {"train": 24, "test": 24})
  src = source_lib.ArraySource(info, {"train": (images, labels),
                                      "test": (images, labels)})
  # One device and XLA's quick compile mode: this checks that the config runs,
  # not how fast.
  one = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
  with _config_flag("jax_disable_most_optimizations", True):
    result = training.train_and_evaluate(config, str(tmp_path), source=src,
                                         mesh=one)
  assert result["steps"] == 2 and np.isfinite(result["train_loss"])
  assert result["num_test_examples"] == 24


def test_weight_decay_skips_batchnorm():
  module = training.trainer.models.get_model(
      {"name": "resnet18", "resnet18": {"width": 4}}, 3)
  params = jax.jit(module.init)(jax.random.key(0),
                                np.zeros((1, 16, 16, 3)))["params"]
  # The decay term alone (rate 1): it adds w to the gradient of every decayed
  # parameter and nothing to BatchNorm scales and offsets.
  decay = optax.add_decayed_weights(1.0, mask=optimizers._decay_mask)  # pylint: disable=protected-access
  grads = jax.tree.map(np.zeros_like, params)
  out, _ = decay.update(grads, decay.init(params), params)
  block = out["stage1_block1"]
  np.testing.assert_array_equal(block["bn1"]["scale"], 0)
  np.testing.assert_array_equal(out["stem_bn"]["bias"], 0)
  np.testing.assert_array_equal(block["conv1"]["kernel"],
                                params["stage1_block1"]["conv1"]["kernel"])
  np.testing.assert_array_equal(out["logits"]["bias"], params["logits"]["bias"])


@pytest.mark.parametrize("field,value,message", [
    ("model.name", "vgg", "config.model.name='vgg'"),
    ("data.name", "mnist2", "config.data.name='mnist2'"),
    ("train.batch_size", 12, "config.train.batch_size=12"),
    ("data.path", "/no/such/file.tar.gz", "/no/such/file.tar.gz"),
])
def test_bad_config_names_the_field(field, value, message):
  config = copy.deepcopy(load_config("cifar10"))
  section, key = field.split(".")
  with config.unlocked():
    config[section][key] = value
  with pytest.raises(validate.ConfigError, match=message.replace(".", r"\.")
                     .replace("(", r"\(")):
    validate.validate(config)


def test_command_line_errors_are_one_line(tmp_path):
  # An unknown field, a bad value and a config file that cannot be loaded stop
  # at start-up with one line that names them, before any data is read.
  bad_syntax = tmp_path / "syntax.py"
  bad_syntax.write_text("def get_config():\n  return (\n")
  bad_name = tmp_path / "name.py"
  bad_name.write_text("def get_config():\n  return undefined_name\n")
  for args, expected in [
      (["--config.train.no_such_field=1"], "train.no_such_field"),
      (["--config.data.path=/missing/dir"], "/missing/dir"),
      (["--config=configs/no_such.py"], "No such file or directory: "
       "'configs/no_such.py'"),
      ([f"--config={bad_syntax}"], f"{bad_syntax}, line 2: "),
      ([f"--config={bad_name}"], "NameError: name 'undefined_name'"),
  ]:
    proc = subprocess.run(
        [sys.executable, "-m", "roar_jax.main", "--config=configs/toy.py",
         f"--workdir={tmp_path}", *args], cwd=REPO, capture_output=True,
        text=True, timeout=120)
    assert proc.returncode != 0
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and expected in lines[0], proc.stderr
