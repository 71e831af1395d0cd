"""A corrupt or missing base checkpoint: the error advises --recompute, and
--recompute leads out (moves the base aside to W/stale/<time>/ and trains it
again) instead of repeating the error."""

import os

import pytest

from conftest import load_config
from roar_jax import main
from roar_jax import training
from roar_jax import workdir as workdir_lib

NUM_STEPS = 4


def _config():
  config = load_config("toy")
  with config.unlocked():
    config.data.image_size = 16
    config.data.toy.image_size = 16
    config.data.toy.num_train = 128
    config.data.toy.num_test = 64
    config.model.small_cnn.width = 8
    config.train.batch_size = 16
    config.train.eval_batch_size = 64
    config.train.num_steps = NUM_STEPS
    config.train.checkpoint_every = 2
    config.explain.estimators = ("random",)
    config.roar.thresholds = (0.5,)
    config.roar.num_seeds = 1
  return config


def _truncate_files(folder):
  for parent, _, names in os.walk(folder):
    for name in names:
      with open(os.path.join(parent, name), "r+b") as f:
        f.truncate(3)


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_recompute_moves_an_unreadable_base_aside_and_retrains(tmp_path,
                                                              damage):
  config, root = _config(), str(tmp_path)
  first = main.run(config, root, "train")
  checkpoint = tmp_path / "base" / "checkpoints" / str(NUM_STEPS)
  if damage == "missing":
    workdir_lib.remove_tree(checkpoint)
  else:
    _truncate_files(checkpoint)
  with pytest.raises(workdir_lib.WorkdirError) as error:
    training.load_state(config, str(tmp_path / "base"))
  message = str(error.value)
  assert "\n" not in message and "rerun with --recompute" in message
  assert str(checkpoint.parent) in message
  again = main.run(config, root, "train", recompute=True)
  (stamp,) = os.listdir(tmp_path / "stale")
  moved = tmp_path / "stale" / stamp / "base"
  assert workdir_lib.read_json(moved / "metrics.json")["params_checksum"] == (
      first["params_checksum"])
  # Trained again from scratch: the same parameters, and they restore.
  assert again["params_checksum"] == first["params_checksum"]
  assert again["resumed_from_steps"] == []
  state = training.load_state(config, str(tmp_path / "base"))
  assert training.params_checksum(state) == first["params_checksum"]
  # A readable base is left where it is.
  main.run(config, root, "train", recompute=True)
  assert os.listdir(tmp_path / "stale") == [stamp]
