"""Rank store, on-the-fly degraded source and written datasets.

The degraded images must be the same bit for bit whichever path produced them:
numpy `degrade` on the stored levels, `DegradedSource` in tf.data, or the
TFRecord dataset written by `write_dataset` and read back.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from roar_jax import workdir as workdir_lib
from roar_jax.data import degradation as degrade_lib
from roar_jax.data import degraded as degraded_lib
from roar_jax.data import rank_store as rank_store_lib
from roar_jax.data import source_protocol as source_lib
from roar_jax.data import writer as writer_lib

SIZE = 8
NUM = {"train": 23, "test": 9}
MEAN = np.array([100.3, 50.7, 200.2])


def _levels(rng, n, shape):
  positions = int(np.prod(shape))
  return np.stack([(rng.permutation(positions) * 100 // positions)
                   .reshape(shape) for _ in range(n)]).astype(np.uint8)


def _base(size=SIZE, seed=0):
  rng = np.random.default_rng(seed)
  splits = {s: (rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                rng.integers(0, 3, n)) for s, n in NUM.items()}
  info = source_lib.DatasetInfo(name="tiny", num_classes=3,
                                image_shape=(size, size, 3),
                                num_examples=dict(NUM),
                                class_names=("a", "b", "c"))
  return source_lib.ArraySource(info, splits)


def _write_ranks(store, estimator, levels_by_split, num_shards=3, seed=0):
  """Writes each split in shuffled shards, as several explain workers might."""
  rng = np.random.default_rng(seed)
  for split, levels in levels_by_split.items():
    order = rng.permutation(len(levels))
    for s, part in enumerate(np.array_split(order, num_shards)):
      store.write_shard(estimator, split, s, num_shards, part, levels[part])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """A base dataset and a rank store with pixel ('grad') and value ('val')
  rankings of its train and test splits."""
  workdir = str(tmp_path_factory.mktemp("workdir"))
  rng = np.random.default_rng(1)
  levels = {
      "grad": {s: _levels(rng, n, (SIZE, SIZE)) for s, n in NUM.items()},
      "val": {s: _levels(rng, n, (SIZE, SIZE, 3)) for s, n in NUM.items()},
  }
  store = rank_store_lib.RankStore(workdir)
  for estimator, by_split in levels.items():
    _write_ranks(store, estimator, by_split)
  return {"base": _base(), "store": store, "levels": levels,
          "workdir": workdir}


def _as_arrays(ds: tf.data.Dataset):
  out = {"image": [], "label": [], "index": []}
  for ex in ds.as_numpy_iterator():
    for k in out:
      out[k].append(ex[k])
  return {k: np.stack(v) for k, v in out.items()}


# Rank store.


def test_rank_store_round_trip_and_lookup(setup):
  store, levels = setup["store"], setup["levels"]
  for estimator in ("grad", "val"):
    for split in NUM:
      np.testing.assert_array_equal(store.read(estimator, split),
                                    levels[estimator][split])
      some = np.array([5, 0, 22, 5, 13]) % NUM[split]
      np.testing.assert_array_equal(store.lookup(estimator, split, some),
                                    levels[estimator][split][some])
      assert store.is_complete(estimator, split, 3)
  assert store.level_shape("grad", "train") == (SIZE, SIZE)
  assert store.level_shape("val", "test") == (SIZE, SIZE, 3)
  assert store.num_examples("grad", "train") == NUM["train"]
  assert store.estimators() == ["grad", "val"]
  # A fresh store (another process) reads the same.
  fresh = rank_store_lib.RankStore(setup["workdir"], cache_shards=1)
  np.testing.assert_array_equal(
      fresh.lookup("val", "train", np.arange(NUM["train"])[::-1]),
      levels["val"]["train"][::-1])
  with pytest.raises(ValueError, match="outside"):
    store.lookup("grad", "test", [NUM["test"]])
  with pytest.raises(ValueError, match="no rankings"):
    store.read("sobel", "train")


def test_rank_store_shards_are_atomic_and_resume(tmp_path, monkeypatch):
  store = rank_store_lib.RankStore(str(tmp_path))
  rng = np.random.default_rng(2)
  levels = _levels(rng, 12, (4, 4))
  parts = np.array_split(np.arange(12), 3)
  store.write_shard("grad", "train", 0, 3, parts[0], levels[parts[0]])
  store.write_shard("grad", "train", 2, 3, parts[2], levels[parts[2]])
  # An interrupted write: the rename never happens.
  def crash(*args, **kwargs):
    raise OSError("simulated crash")
  with monkeypatch.context() as m:
    m.setattr(workdir_lib.os, "replace", crash)
    with pytest.raises(workdir_lib.WorkdirError, match="simulated"):
      store.write_shard("grad", "train", 1, 3, parts[1], levels[parts[1]])
  # A temporary file left behind by a killed process is never a shard.
  directory = os.path.join(str(tmp_path), "ranks", "grad")
  with open(os.path.join(directory, "train-00001-of-00003.npz.tmp999"),
            "wb") as f:
    f.write(b"half written")
  assert not store.has_shard("grad", "train", 1, 3)
  assert store.has_shard("grad", "train", 0, 3)
  assert store.missing_shards("grad", "train", 3) == [1]
  assert not store.is_complete("grad", "train", 3)
  with pytest.raises(ValueError, match=r"shards \[1\] of 3 missing"):
    store.read("grad", "train")
  # Resume: only the missing shard is written; the finished ones stay.
  kept = {s: os.stat(store.shard_path("grad", "train", s, 3)).st_mtime_ns
          for s in (0, 2)}
  for s in store.missing_shards("grad", "train", 3):
    store.write_shard("grad", "train", s, 3, parts[s], levels[parts[s]])
  assert store.is_complete("grad", "train", 3)
  assert {s: os.stat(store.shard_path("grad", "train", s, 3)).st_mtime_ns
          for s in (0, 2)} == kept
  np.testing.assert_array_equal(store.read("grad", "train"), levels)


def test_rank_store_detects_duplicate_missing_and_bad_input(tmp_path):
  rng = np.random.default_rng(3)
  levels = _levels(rng, 6, (4, 4))
  dup = rank_store_lib.RankStore(str(tmp_path / "dup"))
  dup.write_shard("e", "train", 0, 2, [0, 1, 2], levels[:3])
  dup.write_shard("e", "train", 1, 2, [2, 3, 4], levels[2:5])
  with pytest.raises(ValueError, match=r"duplicated \[2\], missing \[5\]"):
    dup.read("e", "train")
  gap = rank_store_lib.RankStore(str(tmp_path / "gap"))
  gap.write_shard("e", "train", 0, 2, [0, 1, 2], levels[:3])
  gap.write_shard("e", "train", 1, 2, [3, 4, 6], levels[3:6])
  with pytest.raises(ValueError, match=r"missing \[5\]"):
    gap.read("e", "train")
  mixed = rank_store_lib.RankStore(str(tmp_path / "mixed"))
  mixed.write_shard("e", "train", 0, 1, np.arange(6), levels)
  mixed.write_shard("e", "train", 0, 2, [0, 1, 2], levels[:3])
  with pytest.raises(ValueError, match="mixes shardings"):
    mixed.read("e", "train")
  bad = rank_store_lib.RankStore(str(tmp_path / "bad"))
  with pytest.raises(ValueError, match="levels"):
    bad.write_shard("e", "train", 0, 1, np.arange(6), levels + 100)
  with pytest.raises(ValueError, match="levels"):
    bad.write_shard("e", "train", 0, 1, np.arange(6), levels.astype(float))
  with pytest.raises(ValueError, match="rows"):
    bad.write_shard("e", "train", 0, 1, np.arange(5), levels)
  with pytest.raises(ValueError, match="estimator"):
    bad.write_shard("../e", "train", 0, 1, np.arange(6), levels)
  with pytest.raises(ValueError, match="shard"):
    bad.write_shard("e", "train", 2, 2, np.arange(6), levels)


# On the fly vs written.


def _direct(setup, estimator, split, **kwargs):
  """The third path: numpy degrade of the base arrays with the true levels."""
  images = setup["base"].arrays(split)[0]
  levels = setup["levels"][estimator][split]
  return degrade_lib.degrade(images, levels, indices=np.arange(len(images)),
                             **kwargs)


@pytest.mark.parametrize("mode,fill,estimator", [
    ("roar", "channel_mean", "grad"),
    ("kar", "channel_mean", "val"),
    ("roar", "noisy_linear", "val"),
    ("kar", "noisy_linear", "grad"),
])
def test_on_the_fly_and_written_datasets_are_identical(setup, tmp_path, mode,
                                                       fill, estimator):
  kwargs = dict(mode=mode, threshold=0.3, fill=fill,
                channel_mean=MEAN if fill == "channel_mean" else None,
                seed=7)
  src = degraded_lib.DegradedSource(setup["base"], setup["store"],
                                    estimator=estimator, batch_size=4,
                                    **kwargs)
  assert src.info.image_shape == (SIZE, SIZE, 3)
  assert src.info.num_examples == NUM
  out = writer_lib.write_dataset(src, str(tmp_path / "ds"),
                                 examples_per_shard=5)
  written = writer_lib.read_dataset(out)
  assert written.info.num_examples == NUM
  assert written.info.num_classes == 3
  for split in NUM:
    on_the_fly = _as_arrays(src.load(split))
    direct = _direct(setup, estimator, split, **kwargs)
    base_images, base_labels = setup["base"].arrays(split)
    np.testing.assert_array_equal(on_the_fly["image"], direct)
    np.testing.assert_array_equal(on_the_fly["label"], base_labels)
    np.testing.assert_array_equal(on_the_fly["index"], np.arange(NUM[split]))
    # The removed fraction changes (ROAR: the top ceil(0.3 n) of n
    # positions; KAR the others), less the few filled values that equal the
    # original by chance.
    n = int(np.prod(src.level_shape))
    top = -(-30 * n // 100)
    removed = (top if mode == "roar" else n - top) / n
    changed = np.mean(direct != base_images)
    assert removed - 0.05 < changed <= removed
    from_disk = _as_arrays(written.load(split))
    for k in ("image", "label", "index"):
      np.testing.assert_array_equal(from_disk[k], on_the_fly[k])
  # Plain TFDS reads it too.
  builder = tfds.builder_from_directory(out)
  assert builder.info.splits["train"].num_examples == NUM["train"]
  assert builder.info.splits["train"].num_shards == 5  # ceil(23 / 5)
  first = next(iter(builder.as_dataset(split="test", shuffle_files=False)))
  np.testing.assert_array_equal(first["image"].numpy(),
                                _direct(setup, estimator, "test",
                                        **kwargs)[0])


def test_two_process_write_reads_back_as_the_full_dataset(setup, tmp_path):
  src = degraded_lib.DegradedSource(
      setup["base"], setup["store"], estimator="grad", mode="roar",
      threshold=0.5, fill="noisy_linear", seed=3)
  # Each process reads its own slice of the degraded data.
  for split in NUM:
    halves = [_as_arrays(src.load(split, process_index=p, process_count=2))
              for p in range(2)]
    full = _as_arrays(src.load(split))
    for k in full:
      np.testing.assert_array_equal(
          np.concatenate([h[k] for h in halves]), full[k])

  out = str(tmp_path / "ds")
  for p in range(2):  # In a real run: two processes at the same time.
    writer_lib.write_dataset(src, out, process_index=p, process_count=2,
                             examples_per_shard=4)
    assert not writer_lib.is_complete(out)
  names = sorted(n for n in os.listdir(out) if ".tfrecord-" in n)
  # train: 12 + 11 examples -> 3 + 3 shards; test: 5 + 4 -> 2 + 1 shards.
  assert len(names) == 9
  assert names[-1].endswith("-train.tfrecord-00005-of-00006")
  with pytest.raises(ValueError, match="not a finished dataset"):
    writer_lib.read_dataset(out)
  writer_lib.write_metadata(out)  # Process 0, after the barrier.
  written = writer_lib.read_dataset(out)
  for split in NUM:
    from_disk = _as_arrays(written.load(split))
    full = _as_arrays(src.load(split))
    for k in full:
      np.testing.assert_array_equal(from_disk[k], full[k])


def test_metadata_waits_for_every_process(setup, tmp_path):
  src = degraded_lib.DegradedSource(
      setup["base"], setup["store"], estimator="grad", mode="kar",
      threshold=0.9, fill="channel_mean", channel_mean=MEAN)
  out = str(tmp_path / "ds")
  writer_lib.write_dataset(src, out, process_index=0, process_count=2,
                           splits=("test",))
  with pytest.raises(ValueError, match=r"processes \[1\] of 2"):
    writer_lib.write_metadata(out)


class _Unreadable:
  def __init__(self, info):
    self.info = info

  def load(self, split, **kwargs):
    raise AssertionError("a finished dataset must not be rewritten")


def test_finished_dataset_is_skipped_and_stale_one_refused(setup, tmp_path):
  src = degraded_lib.DegradedSource(
      setup["base"], setup["store"], estimator="val", mode="roar",
      threshold=0.1, fill="channel_mean", channel_mean=MEAN)
  out = str(tmp_path / "ds")
  writer_lib.write_dataset(src, out, splits=("test",))
  before = {n: os.stat(os.path.join(out, n)).st_mtime_ns
            for n in os.listdir(out) if ".tfrecord-" in n}
  assert writer_lib.write_dataset(_Unreadable(src.info), out,
                                  splits=("test",)) == out
  assert {n: os.stat(os.path.join(out, n)).st_mtime_ns
          for n in os.listdir(out) if ".tfrecord-" in n} == before
  # Half a dataset written with other parameters is refused, not mixed in.
  partial = str(tmp_path / "partial")
  writer_lib.write_dataset(src, partial, splits=("test",), process_index=0,
                           process_count=2, examples_per_shard=3)
  with pytest.raises(ValueError, match="different dataset"):
    writer_lib.write_dataset(src, partial, splits=("test",), process_index=0,
                             process_count=2, examples_per_shard=4)


def test_degraded_source_applies_eval_geometry_first(setup):
  # Base images of 10 x 10; the maps were computed on the central 8 x 8 crop.
  big = _base(size=SIZE + 2, seed=4)

  def crop(image):
    return image[1:SIZE + 1, 1:SIZE + 1]

  src = degraded_lib.DegradedSource(
      big, setup["store"], estimator="grad", mode="roar", threshold=0.7,
      fill="channel_mean", channel_mean=MEAN, eval_geometry=crop)
  assert src.info.image_shape == (SIZE, SIZE, 3)
  got = _as_arrays(src.load("test"))["image"]
  cropped = big.arrays("test")[0][:, 1:SIZE + 1, 1:SIZE + 1]
  expected = degrade_lib.degrade(cropped, setup["levels"]["grad"]["test"],
                                 threshold=0.7, mode="roar",
                                 fill="channel_mean", channel_mean=MEAN)
  np.testing.assert_array_equal(got, expected)
  with pytest.raises(ValueError, match="eval_geometry"):
    degraded_lib.DegradedSource(big, setup["store"], estimator="grad",
                                mode="roar", threshold=0.7,
                                fill="channel_mean", channel_mean=MEAN)


def test_degraded_source_errors(setup, tmp_path):
  kwargs = dict(estimator="grad", mode="roar", threshold=0.5,
                fill="channel_mean", channel_mean=MEAN)
  with pytest.raises(ValueError, match="nothing is left to interpolate"):
    degraded_lib.DegradedSource(setup["base"], setup["store"],
                                **{**kwargs, "threshold": 1.0,
                                   "fill": "noisy_linear"})
  with pytest.raises(ValueError, match="no usable rankings"):
    degraded_lib.DegradedSource(setup["base"], setup["store"],
                                **{**kwargs, "estimator": "sobel"})
  with pytest.raises(ValueError, match="channel_mean"):
    degraded_lib.DegradedSource(setup["base"], setup["store"],
                                **{**kwargs, "channel_mean": None})
  # Rankings of another dataset size.
  store = rank_store_lib.RankStore(str(tmp_path))
  rng = np.random.default_rng(5)
  store.write_shard("grad", "train", 0, 1, np.arange(4),
                    _levels(rng, 4, (SIZE, SIZE)))
  src = degraded_lib.DegradedSource(setup["base"], store, **kwargs)
  with pytest.raises(ValueError, match="ranked 4 images"):
    src.load("train")


def test_corrupt_shard_is_named(tmp_path):
  store = rank_store_lib.RankStore(str(tmp_path))
  levels = _levels(np.random.default_rng(3), 4, (4, 4))
  store.write_shard("grad", "test", 0, 1, np.arange(4), levels)
  path = os.path.join(str(tmp_path), "ranks", "grad",
                      "test-00000-of-00001.npz")
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])  # Truncated.
  with pytest.raises(workdir_lib.WorkdirError,
                     match=f"^{path}: corrupt rank-store shard"):
    rank_store_lib.RankStore(str(tmp_path)).read("grad", "test")
