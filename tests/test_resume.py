"""A run killed past a checkpoint and resumed ends at the parameters of a run
never interrupted, for the base model and for a retrain unit, and its records
say that it was resumed."""

import functools

import numpy as np
import pytest

from conftest import load_config
from roar_jax import training
from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import grid
from roar_jax.data import rank_store
from roar_jax.data import source_protocol
from roar_jax.training import checkpoints

SIZE, NUM_STEPS, CHECKPOINT = 16, 12, 6


def _config():
  config = load_config("toy")
  with config.unlocked():
    config.data.image_size = SIZE
    config.data.augment = "crop_flip"  # Augmentation must resume too.
    config.model.small_cnn.width = 8
    config.train.batch_size = 16
    config.train.eval_batch_size = 64
    config.train.num_steps = NUM_STEPS
    config.train.checkpoint_every = CHECKPOINT
    config.train.log_every = 1
    # A schedule and an optimizer with state: both must pick up at the step.
    config.train.optimizer = "sgd"
    config.train.momentum = 0.9
    config.train.learning_rate = 0.05
    config.train.schedule = "cosine"
    config.train.warmup_steps = 3
    config.explain.estimators = ("random",)
    config.roar.thresholds = (0.5,)
    config.roar.modes = ("roar",)
    config.roar.num_seeds = 1
  return config


def brightness_source(seed: int = 0):
  """40 train and 24 test images whose mean brightness gives the label."""
  rng = np.random.default_rng(seed)
  splits = {}
  for split, n in (("train", 40), ("test", 24)):
    labels = np.arange(n) % 4
    images = rng.integers(0, 64, (n, SIZE, SIZE, 3)) + 48 * labels[:, None,
                                                                  None, None]
    splits[split] = (images.astype(np.uint8), labels)
  return source_protocol.ArraySource(source_protocol.DatasetInfo(
      "brightness", 4, (SIZE, SIZE, 3), {"train": 40, "test": 24}), splits)


def _crash_after_checkpoint(step, metrics):
  del metrics
  if step == CHECKPOINT + 2:
    raise RuntimeError("killed")


@pytest.fixture(autouse=True)
def synchronous_saves(monkeypatch):
  # A killed process keeps nothing of an unfinished save; waiting for each
  # save makes "past a checkpoint" exact in-process.
  monkeypatch.setattr(checkpoints, "save",
                      functools.partial(checkpoints.save, wait=True))


def test_resumed_base_model_equals_uninterrupted(tmp_path):
  config, source = _config(), brightness_source()
  whole = training.train_and_evaluate(config, str(tmp_path / "whole"),
                                      source=source)
  folder = str(tmp_path / "killed")
  with pytest.raises(RuntimeError, match="killed"):
    training.train_and_evaluate(config, folder, source=source,
                                step_callback=_crash_after_checkpoint)
  steps = []
  resumed = training.train_and_evaluate(
      config, folder, source=source, step_callback=lambda s, m: steps.append(s))
  assert steps[0] == CHECKPOINT + 1  # Resumed, not retrained from scratch.
  assert resumed["params_checksum"] == whole["params_checksum"]
  assert resumed["test_accuracy"] == whole["test_accuracy"]
  assert whole["resumed_from_steps"] == []
  assert resumed["resumed_from_steps"] == [CHECKPOINT]
  assert training.load_metrics(folder)["resumed_from_steps"] == [CHECKPOINT]


def test_resumed_retrain_unit_equals_uninterrupted(tmp_path):
  config, source = _config(), brightness_source()
  unit = grid.Unit("random", "roar", 0.5, 0, "channel_mean")
  records = {}
  for name in ("whole", "killed"):
    workdir = str(tmp_path / name)
    store = rank_store.RankStore(workdir)
    rng = np.random.default_rng(1)  # The same rankings in both workdirs.
    for split, n in (("train", 40), ("test", 24)):
      store.write_shard("random", split, 0, 1, np.arange(n),
                        rng.integers(0, 100, (n, SIZE, SIZE)).astype(np.uint8))
    plan = grid.plan_of(config, workdir)
    run = functools.partial(grid.run_unit, config, plan, unit, source,
                            np.full(3, 128.0))
    if name == "killed":
      with pytest.raises(RuntimeError, match="killed"):
        run(step_callback=_crash_after_checkpoint)
    run()
    records[name] = workdir_lib.read_json(plan.results[unit].path)
  whole, resumed = records["whole"], records["killed"]
  assert resumed["params_checksum"] == whole["params_checksum"]
  assert resumed["test_accuracy"] == whole["test_accuracy"]
  assert (whole["resumed_from_steps"], resumed["resumed_from_steps"]) == (
      [], [CHECKPOINT])
