"""A dataset, a model and an estimator of one's own, from a config file."""

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import FIXTURES, REPO
from roar_jax import models

_CONFIG = '''
import flax.linen as nn
import jax.numpy as jnp

from roar_jax import models
from roar_jax.config import defaults


@models.register("tiny_mlp", overwrite=True)
class TinyMLP(nn.Module):
  """Flatten, one hidden layer: a model the project does not ship."""
  num_classes: int
  width: int = 16
  act: object = nn.relu

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = self.act(nn.Dense(self.width)(x.reshape((x.shape[0], -1))))
    return nn.Dense(self.num_classes)(x)


def get_config():
  c = defaults.base_config()
  c.model.name = "tiny_mlp"
  c.model.tiny_mlp = {"width": 8}
  c.data.name = "mydata"
  c.data.path = PATH
  c.data.image_size = 32
  c.train.batch_size = 16
  c.train.eval_batch_size = 16
  c.train.num_steps = 5
  c.train.log_every = 5
  c.train.optimizer = "adam"
  c.train.learning_rate = 1e-3
  return c
'''


def test_register_adds_a_model_and_refuses_a_clash():
  @models.register("byo_test_model", overwrite=True)
  def build(num_classes, width=4):
    return ("built", num_classes, width)

  assert models.get_model({"name": "byo_test_model",
                           "byo_test_model": {"width": 7}}, 3) == (
                               "built", 3, 7)
  with pytest.raises(ValueError, match="'resnet18' exists"):
    models.register("resnet18")(build)
  with pytest.raises(TypeError):
    models.MODELS["x"] = build  # A read-only view.


def test_folder_dataset_of_ones_own_trains_with_a_registered_model(tmp_path):
  config = tmp_path / "mine.py"
  config.write_text(textwrap.dedent(_CONFIG).replace(
      "PATH", repr(str(FIXTURES / "cifar10-mini.tar.gz"))))
  workdir = tmp_path / "w"
  out = subprocess.run(
      [sys.executable, "-m", "roar_jax.main", f"--config={config}",
       f"--workdir={workdir}", "--mode=train"],
      capture_output=True, text=True, timeout=300, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "test accuracy: " in out.stdout
  # Prepared inside the workdir (data_dir unset), under the user's name.
  assert os.listdir(workdir / "data")
  assert "dataset mydata: 200 train / 100 test images, 10 classes" in (
      out.stderr)
  # The file's name aside, nothing calls the user's data CIFAR-10.
  logs = out.stderr.replace("cifar10-mini", "").replace("cifar10_mini", "")
  assert "cifar10" not in logs and "Using custom data configuration" not in logs
