"""The mask-leakage probe: above chance for a mask that encodes the class,
at chance for a random mask."""

import csv
import io
import os

import numpy as np
import pytest

from conftest import load_config
from roar_jax.benchmark.roar import grid
from roar_jax.benchmark.roar import leakage
from roar_jax.data import rank_store
from roar_jax.data import source_protocol

SIZE = 16


def _textures(labels):
  """Levels whose top half (levels < 50) draws a texture of the class:
  horizontal stripes, vertical stripes, checkerboard, 4 x 4 blocks."""
  r, c = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
  top = np.stack([r % 2 == 0, c % 2 == 0, (r + c) % 2 == 0,
                  ((r // 4) + (c // 4)) % 2 == 0])
  rng = np.random.default_rng(0)
  low = rng.integers(0, 50, (len(labels), SIZE, SIZE))
  return np.where(top[labels], low, low + 50).astype(np.uint8)


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("leakage"))
  config = load_config("toy")
  with config.unlocked():
    config.data.image_size = SIZE
    config.model.small_cnn.width = 8
    config.explain.estimators = ("encoded", "random")
    config.roar.thresholds = (0.5,)
    config.roar.modes = ("roar",)
    config.train.batch_size = 64
    config.train.eval_batch_size = 128
    config.train.num_steps = 240
    config.metrics.leakage_steps = 30
  rng = np.random.default_rng(1)
  splits, store = {}, rank_store.RankStore(workdir)
  for split, n in (("train", 512), ("test", 256)):
    labels = np.arange(n) % 4
    splits[split] = (np.zeros((n, SIZE, SIZE, 3), np.uint8), labels)
    store.write_shard("encoded", split, 0, 1, np.arange(n), _textures(labels))
    store.write_shard("random", split, 0, 1, np.arange(n),
                      rng.integers(0, 100, (n, SIZE, SIZE)).astype(np.uint8))
  source = source_protocol.ArraySource(source_protocol.DatasetInfo(
      "textures", 4, (SIZE, SIZE, 3), {"train": 512, "test": 256}), splits)
  plan = grid.plan_of(config, workdir)
  rows = leakage.run(config, plan, source)
  return config, workdir, plan, source, {r["estimator"]: r for r in rows}


def test_probe_reads_the_class_from_an_encoding_mask(probes):
  _, _, _, _, rows = probes
  assert rows["encoded"]["chance"] == 0.25
  # The removal mask draws the class's texture: the probe finds it (measured
  # 1.0 after 30 steps).
  assert rows["encoded"]["mask_only_accuracy"] > 0.9


def test_probe_is_at_chance_for_a_random_mask(probes):
  _, _, _, _, rows = probes
  # 256 test images: chance 0.25 +- 0.054 (2 standard errors).
  assert abs(rows["random"]["mask_only_accuracy"] - 0.25) < 0.08


def test_leakage_csv_and_records_are_reused(probes, monkeypatch):
  config, workdir, plan, source, _ = probes
  text = open(os.path.join(workdir, "report", "leakage.csv")).read()
  rows = list(csv.DictReader(io.StringIO(text)))
  assert list(rows[0]) == list(leakage.CSV_COLUMNS)
  assert [(r["estimator"], r["mode"], r["threshold"]) for r in rows] == [
      ("encoded", "roar", "0.5"), ("random", "roar", "0.5")]
  monkeypatch.setattr(leakage, "train_probe",
                      lambda *a: pytest.fail("retrained"))
  again = leakage.run(config, plan, source)
  assert [r["mask_only_accuracy"] for r in again] == pytest.approx([
      float(r["mask_only_accuracy"]) for r in rows], abs=1e-6)
  # The probe's training config: the base recipe, shortened.
  probe = leakage.probe_config(config)
  assert probe.train.num_steps == 30 and probe.data.mean == (0.5,) * 3
