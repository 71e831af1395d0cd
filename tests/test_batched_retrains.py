"""Runs trained together in one program (`training/batched.py`) equal the same
runs trained alone, and a grid with `roar.batch_units=2` stores the results of
`roar.batch_units=1`.

Tolerance: under `jax.vmap` a convolution over K stacked kernels is one
grouped convolution, whose sums XLA orders differently from K separate ones,
so values agree to float32 rounding, not bit for bit. Over the 12 steps here
the loss curves differ by about one float32 ulp (1e-7 relative, on the 2-core
CPU); they are held to a relative 1e-5 (LOSS_RTOL), 100 times that, as other
backends and XLA versions order sums otherwise and Adam's division by the
running gradient scale can grow rounding over steps. The parameters (1e-6 of
the largest one apart) are held to 1e-4 of it, and every test image keeps
its class: the same accuracy and per-image correct bits, exactly.
"""

import copy
import shutil

import jax
import numpy as np
import pytest

from conftest import load_config
from roar_jax import training
from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import grid
from roar_jax.benchmark.roar import pipeline as roar
from roar_jax.benchmark.roar import results
from roar_jax.config import validation
from roar_jax.training import batched
from test_resume import SIZE, brightness_source

NUM_STEPS = 12
LOSS_RTOL = 1e-5
PARAMS_TOL = 1e-4  # Of the largest parameter's magnitude.
# Keys of a record that are not a function of the training's values.
_RUN_SPECIFIC = ("wall_time_s", "params_checksum", "record_checksum")
_FLOATS = ("train_loss", "train_accuracy", "test_loss")


def _config(seed):
  config = load_config("toy")
  with config.unlocked():
    config.seed = seed
    config.data.image_size = SIZE
    config.data.augment = "crop_flip"  # Each run augments with its own seed.
    config.model.small_cnn.width = 8
    config.train.batch_size = 16
    config.train.eval_batch_size = 64
    config.train.num_steps = NUM_STEPS
    config.train.checkpoint_every = 6
    config.train.log_every = 1
  return config


def _recorder():
  curve = []
  return curve, lambda step, metrics: curve.append((step, metrics["loss"]))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Two runs (their own seed and data) trained alone, then together."""
  root = tmp_path_factory.mktemp("batched")
  configs, sources = [_config(3), _config(8)], [brightness_source(0), brightness_source(1)]
  alone, alone_curves = [], []
  for i, (config, source) in enumerate(zip(configs, sources)):
    curve, callback = _recorder()
    alone.append(training.train_and_evaluate(
        config, str(root / f"alone{i}"), source=source,
        step_callback=callback))
    alone_curves.append(curve)
  recorders = [_recorder() for _ in configs]
  workdirs = [str(root / f"together{i}") for i in range(len(configs))]
  together = batched.train_and_evaluate_many(
      configs, workdirs, sources=sources,
      step_callbacks=[callback for _, callback in recorders])
  return (configs, sources, workdirs, alone, alone_curves, together,
          [curve for curve, _ in recorders])


def test_runs_together_equal_runs_alone(runs):
  _, _, workdirs, alone, alone_curves, together, curves = runs
  for i in range(2):
    steps = [s for s, _ in curves[i]]
    assert steps == [s for s, _ in alone_curves[i]] == list(
        range(1, NUM_STEPS + 1))
    np.testing.assert_allclose([l for _, l in curves[i]],
                               [l for _, l in alone_curves[i]],
                               rtol=LOSS_RTOL)
    assert together[i]["steps"] == alone[i]["steps"] == NUM_STEPS
    assert together[i]["test_accuracy"] == alone[i]["test_accuracy"]
    assert together[i]["test_correct_bits"] == alone[i]["test_correct_bits"]
    assert together[i]["num_test_examples"] == 24
    assert together[i]["resumed_from_steps"] == []
    assert set(together[i]) == set(alone[i])
    assert training.load_metrics(workdirs[i]) == together[i]
  # The two runs differ (seed and data): neither is a copy of the other.
  assert [l for _, l in curves[0]] != [l for _, l in curves[1]]


def _flat(params):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(params)])


def test_run_together_restores_and_resumes_alone(runs):
  configs, sources, workdirs, alone, _, together, _ = runs
  for i in range(2):
    # The checkpoint is the unstacked state whose checksum metrics.json holds
    # (load_state checks it), at the parameters of the run alone.
    state = training.load_state(configs[i], workdirs[i], source=sources[i])
    reference = training.load_state(
        configs[i], workdirs[i].replace("together", "alone"),
        source=sources[i])
    assert training.params_checksum(state) == together[i]["params_checksum"]
    assert training.params_checksum(reference) == alone[i]["params_checksum"]
    got, want = _flat(state.params), _flat(reference.params)
    np.testing.assert_allclose(got, want, rtol=0,
                               atol=PARAMS_TOL * np.abs(want).max())
  # Finished runs hold checkpoints: run again, each goes alone and only
  # evaluates, reporting what it reported.
  again = batched.train_and_evaluate_many(configs, workdirs, sources=sources)
  for i in range(2):
    for key in ("params_checksum", "test_correct_bits", "train_loss"):
      assert again[i][key] == together[i][key]


def test_runs_with_other_recipes_are_refused(tmp_path):
  other = _config(1)
  with other.unlocked():
    other.train.learning_rate = 0.1
  with pytest.raises(ValueError, match="must share config.train"):
    batched.train_and_evaluate_many(
        [_config(0), other], [str(tmp_path / "a"), str(tmp_path / "b")],
        sources=[brightness_source(0), brightness_source(1)])


# A float never gets this far: ml_collections refuses it for an int field.
@pytest.mark.parametrize("value", [0, -1, True])
def test_batch_units_must_be_a_positive_integer(value):
  config = load_config("toy")
  with config.unlocked():
    config.roar.batch_units = 2
  validation.validate(config, "roar")
  # Not a result field: the config hash is that of one unit at a time.
  assert results.config_hash(config) == results.config_hash(
      load_config("toy"))
  with config.unlocked():
    config.roar.batch_units = value
  with pytest.raises(validation.ConfigError,
                     match=r"^config\.roar\.batch_units=.* integer >= 1"):
    validation.validate(config, "roar")


def _grid_config():
  """The toy grid, small: 2 modes x 2 seeds = 4 units of 10 steps."""
  config = load_config("toy")
  with config.unlocked():
    config.data.image_size = SIZE
    config.data.toy.update({"num_train": 256, "num_test": 64,
                            "image_size": SIZE})
    config.model.small_cnn.width = 8
    config.train.batch_size = 16
    config.train.eval_batch_size = 64
    config.train.num_steps = 10
    config.train.checkpoint_every = 10
    config.train.log_every = 5
    config.explain.estimators = ("random",)
    config.explain.batch_size = 64
    config.explain.shard_size = 256
    config.roar.thresholds = (0.5,)
    config.roar.num_seeds = 2
    config.metrics.with_roar = False
  return config


def _records(workdir):
  return {r["estimator"] + r["mode"] + str(r["seed"]): r
          for _, r in workdir_lib.iter_json(
              workdir_lib.Workdir(workdir).sub("results"))}


def test_grid_in_pairs_stores_the_records_of_one_at_a_time(tmp_path,
                                                            monkeypatch):
  config = _grid_config()
  one = str(tmp_path / "one")
  roar.run(config, one)
  # The same workdir up to the retrains (base model, rank store): changing
  # batch_units leaves every artifact valid.
  two = str(tmp_path / "two")
  shutil.copytree(one, two, ignore=shutil.ignore_patterns(
      "results", "retrain", "report"))
  groups = []
  together = batched.train_and_evaluate_many
  monkeypatch.setattr(batched, "train_and_evaluate_many",
                      lambda configs, *a, **k: groups.append(len(configs))
                      or together(configs, *a, **k))
  paired = copy.deepcopy(config)
  with paired.unlocked():
    paired.roar.batch_units = 2
  out = roar.run(paired, two)
  assert out["units"] == 4 and groups == [2, 2]
  alone, pairs = _records(one), _records(two)
  assert len(alone) == 4 and alone.keys() == pairs.keys()
  for name, record in alone.items():
    other = pairs[name]
    assert record.keys() == other.keys()
    for key in set(record) - set(_RUN_SPECIFIC) - set(_FLOATS):
      assert other[key] == record[key], (name, key)
    for key in _FLOATS:
      np.testing.assert_allclose(other[key], record[key], rtol=LOSS_RTOL)
    grid.verify_result(grid.plan_of(paired, two), grid.Unit(
        record["estimator"], record["mode"], record["threshold"],
        record["seed"], record["fill"]), other)
