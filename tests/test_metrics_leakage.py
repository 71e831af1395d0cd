"""The mask-leakage probe: above chance for a mask that encodes the class,
at chance for a random mask, the same (within its interval) for a mask and
its complement, and its seed statistics by hand."""

import csv
import io
import os

import numpy as np
import pytest
from scipy import stats

from conftest import load_config
from roar_jax.benchmark.roar import grid
from roar_jax.benchmark.roar import leakage
from roar_jax.data import rank_store
from roar_jax.data import source_protocol

SIZE = 16


def _textures(labels, informative=1.0, seed=0):
  """Levels whose top half (levels < 50) draws a texture of the class:
  horizontal stripes, vertical stripes, checkerboard, 4 x 4 blocks; only
  the first `informative` fraction of each class's images (the others draw
  the texture of a random class)."""
  r, c = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
  top = np.stack([r % 2 == 0, c % 2 == 0, (r + c) % 2 == 0,
                  ((r // 4) + (c // 4)) % 2 == 0])
  rng = np.random.default_rng(seed)
  drawn = np.where(np.arange(len(labels)) < informative * len(labels), labels,
                   rng.integers(0, 4, len(labels)))
  low = rng.integers(0, 50, (len(labels), SIZE, SIZE))
  return np.where(top[drawn], low, low + 50).astype(np.uint8)


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("leakage"))
  config = load_config("toy")
  with config.unlocked():
    config.data.image_size = SIZE
    config.model.small_cnn.width = 8
    config.explain.estimators = ("encoded", "partial", "random")
    config.roar.thresholds = (0.5,)
    config.roar.modes = ("roar", "kar")
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
    # Half the images tell their class: the probe is between chance and 1.
    store.write_shard("partial", split, 0, 1, np.arange(n),
                      _textures(labels, informative=0.5, seed=2))
    store.write_shard("random", split, 0, 1, np.arange(n),
                      rng.integers(0, 100, (n, SIZE, SIZE)).astype(np.uint8))
  source = source_protocol.ArraySource(source_protocol.DatasetInfo(
      "textures", 4, (SIZE, SIZE, 3), {"train": 512, "test": 256}), splits)
  plan = grid.plan_of(config, workdir)
  rows = leakage.run(config, plan, source)
  return config, workdir, plan, source, {(r["estimator"], r["mode"]): r
                                          for r in rows}


def test_probe_reads_the_class_from_an_encoding_mask(probes):
  _, _, _, _, rows = probes
  row = rows["encoded", "roar"]
  assert row["chance"] == 0.25
  # The removal mask draws the class's texture: the probe finds it (measured
  # 1.0 after 30 steps, every seed).
  assert row["mask_only_accuracy"] > 0.9
  assert row["num_probe_seeds"] == 3
  assert all(float(a) > 0.9 for a in row["accuracy_by_seed"].split())


def test_probe_is_at_chance_for_a_random_mask(probes):
  _, _, _, _, rows = probes
  # 256 test images: chance 0.25 +- 0.054 (2 standard errors).
  for mode in ("roar", "kar"):
    assert abs(rows["random", mode]["mask_only_accuracy"] - 0.25) < 0.08


def _welch_interval(a, b):
  """95% Student-t (Welch) interval of mean(a) - mean(b); a point when
  neither sample varies."""
  va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
  diff = np.mean(a) - np.mean(b)
  if va + vb == 0:
    return diff, diff
  df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
  half = stats.t.ppf(0.975, df) * np.sqrt(va + vb)
  return diff - half, diff + half


def test_complementary_masks_leak_the_same(probes):
  # ROAR-50% and KAR-50% remove complementary halves: the same information,
  # so the same accuracy within the probes' seed spread (measured: 0.6055,
  # 155 of 256, for every seed of both: the probe reads all the class
  # information the masks hold, 128 + 128 / 4 expected).
  _, _, _, _, rows = probes
  roar, kar = (np.array([float(a) for a in rows["partial", m][
      "accuracy_by_seed"].split()]) for m in ("roar", "kar"))
  # Half the images carry their class: well above chance, well below 1.
  for acc in (roar, kar):
    assert 0.4 < acc.mean() < 0.9, acc
  low, high = _welch_interval(roar, kar)
  assert low <= 0.0 <= high, (roar, kar)
  row = rows["partial", "kar"]
  assert row["ci95_low"] <= row["mask_only_accuracy"] <= row["ci95_high"]


def test_seed_summary_by_hand():
  got = leakage.seed_summary([0.5, 0.6, 0.7])
  # mean 0.6, sd 0.1; t(0.975, 2 df) = 4.302653.
  half = 4.302653 * 0.1 / np.sqrt(3)
  assert got["mask_only_accuracy"] == pytest.approx(0.6)
  assert (got["ci95_low"], got["ci95_high"]) == pytest.approx(
      (0.6 - half, 0.6 + half), abs=1e-6)
  assert got["num_probe_seeds"] == 3
  one = leakage.seed_summary([0.4])
  assert one["mask_only_accuracy"] == 0.4 and np.isnan(one["ci95_low"])


def test_leakage_csv_and_records_are_reused(probes, monkeypatch):
  config, workdir, plan, source, _ = probes
  text = open(os.path.join(workdir, "report", "leakage.csv")).read()
  rows = list(csv.DictReader(io.StringIO(text)))
  assert list(rows[0]) == list(leakage.CSV_COLUMNS)
  assert sorted((r["estimator"], r["mode"], r["threshold"]) for r in rows) == [
      (e, m, "0.5") for e in ("encoded", "partial", "random")
      for m in ("kar", "roar")]
  for r in rows:
    by_seed = [float(a) for a in r["accuracy_by_seed"].split()]
    assert len(by_seed) == int(r["num_probe_seeds"]) == 3
    assert float(r["mask_only_accuracy"]) == pytest.approx(np.mean(by_seed),
                                                           abs=1e-5)
  monkeypatch.setattr(leakage, "train_probe",
                      lambda *a: pytest.fail("retrained"))
  again = leakage.run(config, plan, source)
  assert [r["mask_only_accuracy"] for r in again] == pytest.approx([
      float(r["mask_only_accuracy"]) for r in rows], abs=1e-6)
  # The probe's training config: the base recipe, shortened.
  probe = leakage.probe_config(config)
  assert probe.train.num_steps == 30 and probe.data.mean == (0.5,) * 3
  # Every probe seed its own seed, none a retrain's (seed * 1000 + 1 + k).
  seeds = {leakage.probe_config(config, k).seed for k in range(3)}
  assert len(seeds) == 3 and not seeds & set(range(1, 6))
