"""The metric and protocol registries: the built-in metrics unchanged by the
move onto them, and a metric or a protocol added in a few lines reaching the
report."""

import json
import os

import numpy as np
import pytest

from roar_jax import saliency
from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import grid
from roar_jax.benchmark.roar import metric_maps
from roar_jax.benchmark.roar import metric_plugins
from roar_jax.benchmark.roar import metric_registry
from roar_jax.benchmark.roar import protocol_plugins
from roar_jax.benchmark.roar import metrics
from roar_jax.benchmark.roar import protocol_registry
from roar_jax.benchmark.roar import tables
from roar_jax.config import validation
from roar_jax.data import rank_store

import test_metrics
from test_metrics import toy  # pylint: disable=unused-import

# The records' metric entries of test_metrics' stage (the matched-filter
# model, the oracle and random rank stores, K = 10, ROAD at 20/50/80%) as the
# metrics stage wrote them before the metrics were registered plug-ins
# (commit 35abd60; every float at full precision).
GOLDEN = os.path.join(os.path.dirname(__file__), "fixtures",
                      "metrics_toy_golden.json")


def _stage(config, toy_data, workdir):
  """metrics.run over the oracle and random rank stores of test_metrics."""
  _, source, model, images, _, masks = toy_data
  plan = grid.plan_of(config, workdir)
  store = rank_store.RankStore(workdir)
  n = test_metrics.NUM_TEST
  for est, levels in (
      ("oracle", test_metrics._oracle_levels(masks, images.shape)),
      ("random", test_metrics._random_levels(images.shape))):
    store.write_shard(est, "test", 0, 1, np.arange(n), levels)
  fill = images.reshape(-1, 3).mean(0)
  return metrics.run(config, plan, source, fill, logits_fn=model)


def test_built_in_metrics_equal_the_records_before_the_move(toy, tmp_path):
  _stage(test_metrics._config(), toy, str(tmp_path))
  golden = json.load(open(GOLDEN))
  for est in ("oracle", "random"):
    record = json.load(open(tmp_path / "metrics" / f"{est}.json"))
    # Equal to the last bit: json round-trips floats exactly.
    assert json.loads(json.dumps(record["metrics"], sort_keys=True)) == (
        golden[est])


@pytest.fixture
def mean_map_metric():
  """A metric written as a user would: the mean of |map| per image."""
  @metric_registry.register("mean_abs_map", needs=("maps",),
                            lower_is_better=False, title="mean |map|")
  def mean_abs_map(batch):
    return {"mean_abs_map": np.abs(batch.maps()).mean(axis=(1, 2, 3))}

  @metric_registry.register("top_level_share", needs=("ranks",),
                            lower_is_better=True)
  def top_level_share(batch):
    # The share of positions in the first removal level (about 1%).
    return {"top_level_share": (batch.levels == 0).mean(axis=(1, 2))}

  yield mean_abs_map
  metric_registry.unregister("mean_abs_map")
  metric_registry.unregister("top_level_share")


def test_a_registered_metric_reaches_metrics_csv(toy, tmp_path,
                                                 mean_map_metric):
  config = test_metrics._config()
  with config.unlocked():
    config.explain.estimators = ("oracle", "random")
    config.metrics.names = ("deletion", "mean_abs_map", "top_level_share")
  validation.validate(config, mode="metrics")
  out = _stage(config, toy, str(tmp_path))
  rows = {(r["estimator"], r["metric"]): r for r in out["metrics"]}
  # The oracle has no maps of the model (it reads the true mask): the maps
  # metric skips it; the rank metric scores both.
  assert ("oracle", "mean_abs_map") not in rows
  assert {("random", "mean_abs_map"), ("oracle", "top_level_share"),
          ("random", "top_level_share"), ("oracle", "deletion_auc")} <= (
              set(rows))
  # The value is the hand computation: `random`'s maps of the same images
  # with the stage's key (config.seed, stream 11) and indices.
  _, source, model, images, _, _ = toy
  model_fn = saliency.Model(logits=model)
  maps_fn = metric_maps.maps_fn(config, model_fn, source)
  batch = metric_registry.Batch(
      "random", images, np.zeros(len(images), np.int32),
      np.arange(len(images)), model, None, config,
      mean=config.data.mean, std=config.data.std, maps_fn=maps_fn)
  expected = np.abs(batch.maps()).mean(axis=(1, 2, 3))
  assert rows[("random", "mean_abs_map")]["value"] == pytest.approx(
      expected.mean(), rel=1e-6)
  # Levels are whole percents: level 0 holds 1% of the 32 x 32 positions.
  assert rows[("oracle", "top_level_share")]["value"] == pytest.approx(
      0.01, abs=0.002)
  # The report's heading reads the direction from the registry.
  assert tables.metric_heading("top_level_share") == (
      "top_level_share [95% CI] (lower is better)")
  assert tables.metric_heading("deletion_auc") == (
      "deletion AUC [95% CI] (lower is better)")
  csv_rows = test_metrics._read(os.path.join(tmp_path, "report",
                                             "metrics.csv"))
  assert {r["metric"] for r in csv_rows} == {
      "deletion_auc", "mean_abs_map", "top_level_share"}


def test_unknown_metric_names_fail_with_a_hint():
  config = test_metrics._config()
  with config.unlocked():
    config.metrics.names = ("deletion", "insertoin")
  with pytest.raises(validation.ConfigError,
                     match=r"config.metrics.names: unknown metric "
                     r"'insertoin'; did you mean 'insertion'"):
    validation.validate(config, mode="metrics")


def test_registry_refuses_a_bad_declaration():
  with pytest.raises(ValueError, match="unknown needs"):
    metric_registry.register("x", needs=("retrains",), lower_is_better=True)
  with pytest.raises(ValueError, match="already registered"):
    metric_registry.register("deletion", lower_is_better=True)(lambda b: {})
  assert metric_plugins.direction("road_lerf_auc") is False
  assert metric_plugins.columns()[:4] == (
      "deletion_auc", "insertion_auc", "road_morf_auc", "road_lerf_auc")


def test_a_registered_protocol_runs_after_the_metrics(toy, tmp_path):
  """A protocol in a few lines: it reads metrics.csv's rows, writes its file
  and returns its rows under its name; the built-in ones still run."""
  @protocol_registry.register("lowest_deletion", needs=("metric_rows",),
                              writes=("lowest_deletion.csv",))
  def lowest_deletion(context):
    if context.metric_rows is None:
      return []
    rows = [r for r in context.metric_rows if r["metric"] == "deletion_auc"]
    best = [{"estimator": min(rows, key=lambda r: r["value"])["estimator"]}]
    workdir_lib.write_csv(context.plan.workdir.report("lowest_deletion.csv"),
                          best, ("estimator",))
    return best

  try:
    config = test_metrics._config()
    with config.unlocked():
      config.metrics.names = ("deletion",)
    out = _stage(config, toy, str(tmp_path))
  finally:
    protocol_registry.unregister("lowest_deletion")
  # The oracle deletes the pattern first (test_metrics: AUC 0.03 vs 0.29).
  assert out["lowest_deletion"] == [{"estimator": "oracle"}]
  assert open(tmp_path / "report" / "lowest_deletion.csv").read().split() == [
      "estimator", "oracle"]
  # The agreement table ran as a protocol too; the leakage probe is off in
  # this config and returns no rows.
  assert out["leakage"] == []
  assert (tmp_path / "report" / "agreement.csv").exists()
  assert "lowest_deletion" not in protocol_plugins.names()
