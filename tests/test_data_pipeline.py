"""Input pipelines and preprocessing: coverage, padding, normalization, crops."""

import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from roar_jax.config import defaults as config_lib
from roar_jax.data import order
from roar_jax.data import pipeline
from roar_jax.data import preprocess
from roar_jax.data import source_protocol as source_lib
from roar_jax.data import sources

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")

MEAN = (0.4, 0.6, 0.2)  # x 255 = 102, 153, 51: exact uint8 values.
STD = (0.25, 0.5, 0.1)


def _config(**fields) -> ml_collections.ConfigDict:
  c = config_lib.base_config().data
  c.mean, c.std, c.image_size = MEAN, STD, 8
  for k, v in fields.items():
    c[k] = v
  return c


def _numbered_source(n_train=30, n_test=37, size=8, seed=0):
  """Random images; label = index (mod 1000) so batches can be traced."""
  rng = np.random.default_rng(seed)
  splits = {}
  for split, n in (("train", n_train), ("test", n_test)):
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    splits[split] = (images, np.arange(n) % 1000)
  info = source_lib.DatasetInfo(
      name="numbered", num_classes=1000, image_shape=(size, size, 3),
      num_examples={k: len(v[0]) for k, v in splits.items()})
  return source_lib.ArraySource(info, splits)


def _constant_source(value, n=16, size=8):
  images = np.broadcast_to(np.asarray(value, np.uint8),
                           (n, size, size, 3)).copy()
  info = source_lib.DatasetInfo(name="constant", num_classes=2,
                                image_shape=(size, size, 3),
                                num_examples={"train": n, "test": n})
  labels = np.arange(n) % 2
  return source_lib.ArraySource(info, {"train": (images, labels),
                                       "test": (images, labels)})


# ------------------------------------------------------------------- eval


@pytest.mark.parametrize("process_count,global_batch", [(1, 8), (2, 8),
                                                        (3, 12)])
def test_eval_covers_every_example_once_with_masked_padding(process_count,
                                                            global_batch):
  src = _numbered_source()
  config = _config()
  images, labels = src.arrays("test")
  per_process = []
  for p in range(process_count):
    batches = pipeline.eval_iterator(src, config, "test",
                                     global_batch_size=global_batch,
                                     process_index=p,
                                     process_count=process_count)
    expected_len = len(batches)
    batches = list(batches)
    assert len(batches) == expected_len
    per_process.append(batches)
  counts = {len(b) for b in per_process}
  assert len(counts) == 1  # Same number of batches on every process.
  local = global_batch // process_count
  assert counts.pop() == -(-(-(-37 // process_count)) // local)
  seen = []
  for batches in per_process:
    for b in batches:
      assert b["image"].shape == (local, 8, 8, 3)
      assert b["image"].dtype == np.float32 and b["label"].dtype == np.int32
      assert b["index"].dtype == np.int64 and b["mask"].dtype == np.float32
      real = b["mask"] == 1.0
      np.testing.assert_array_equal(b["mask"][~real], 0.0)
      np.testing.assert_array_equal(b["index"][~real], -1)
      np.testing.assert_array_equal(b["image"][~real], 0.0)
      idx = b["index"][real]
      seen.extend(idx.tolist())
      np.testing.assert_array_equal(b["label"][real], labels[idx])
      np.testing.assert_allclose(
          b["image"][real], (images[idx] / 255.0 - MEAN) / STD, rtol=1e-5,
          atol=1e-5)
  assert sorted(seen) == list(range(37))  # Each exactly once.


def test_eval_batch_count_formula_and_batch_size_errors():
  assert pipeline.num_eval_batches(37, 8, 2) == 5  # Slices 19 + 18, local 4.
  assert pipeline.num_eval_batches(40, 8, 1) == 5
  assert pipeline.num_eval_batches(1, 8, 2) == 1
  with pytest.raises(ValueError, match="global_batch_size=9 must be a "
                     "positive multiple of the number of processes"):
    pipeline.eval_iterator(_numbered_source(), _config(), "test",
                           global_batch_size=9, process_count=2)


def test_eval_on_image_folder_fixture_matches_the_source(tmp_path):
  config = _config(name="cifar10", path=os.path.join(
      FIXTURES, "cifar10-mini.tar.gz"), data_dir=str(tmp_path), image_size=32)
  src = sources.get_source(config)
  raw = list(src.load("test").as_numpy_iterator())
  got = {}
  for p in range(2):
    for b in pipeline.eval_iterator(src, config, "test", global_batch_size=64,
                                    process_index=p, process_count=2):
      for i, image in zip(b["index"][b["mask"] > 0], b["image"][b["mask"] > 0]):
        got[int(i)] = image
  assert sorted(got) == list(range(100))
  for ex in raw[::17]:
    np.testing.assert_allclose(got[int(ex["index"])],
                               (ex["image"] / 255.0 - MEAN) / STD, atol=1e-5)


# ------------------------------------------------------------------ train


def test_mean_colored_image_normalizes_to_zero():
  src = _constant_source([102, 153, 51])
  for augment in ("none", "crop_flip", "inception"):
    batch = next(pipeline.train_iterator(
        src, _config(augment=augment), global_batch_size=4, seed=0))
    assert batch["image"].shape == (4, 8, 8, 3)
    assert batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32
    np.testing.assert_allclose(batch["image"], 0.0, atol=1e-6)
  # One std below the mean in every channel normalizes to -1.
  below = np.rint((np.array(MEAN) - np.array(STD)) * 255).astype(np.uint8)
  batch = next(pipeline.train_iterator(_constant_source(below), _config(),
                                       global_batch_size=4, seed=0))
  np.testing.assert_allclose(batch["image"], -1.0, atol=0.02)


def test_train_batches_are_deterministic_shuffled_and_per_process():
  src = _numbered_source(n_train=30)
  config = _config(shuffle_buffer=100, augment="crop_flip")

  def first_batches(seed, process_index=0, process_count=1, n=3):
    it = pipeline.train_iterator(src, config, global_batch_size=10, seed=seed,
                                 process_index=process_index,
                                 process_count=process_count)
    return [next(it) for _ in range(n)]

  a, b, c = first_batches(0), first_batches(0), first_batches(1)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
  assert not np.array_equal(a[0]["label"], c[0]["label"])
  # One epoch of 30 = 3 batches: every example once, shuffled, in the
  # order's permutation of (seed 0, epoch 0).
  epoch = np.concatenate([x["label"] for x in a])
  assert sorted(epoch.tolist()) == list(range(30))
  assert epoch.tolist() != list(range(30))
  np.testing.assert_array_equal(epoch, order.epoch_permutation(0, 0, 30))
  # Two processes: each takes its contiguous half of every global batch,
  # augmented alike, so the global batches are the 1-process batches.
  halves = [first_batches(0, p, 2) for p in range(2)]
  for step, whole in enumerate(a):
    for key in ("image", "label"):
      np.testing.assert_array_equal(
          np.concatenate([halves[0][step][key], halves[1][step][key]]),
          whole[key])


def test_global_batches_are_a_pure_function_of_seed_and_step():
  # 25 examples, batches of 10: batch 2 spans the end of epoch 0 and the
  # start of epoch 1, whose permutations are independent draws.
  n, batch = 25, 10
  p0, p1 = order.epoch_permutation(7, 0, n), order.epoch_permutation(7, 1, n)
  assert sorted(p0.tolist()) == sorted(p1.tolist()) == list(range(n))
  assert not np.array_equal(p0, p1)
  np.testing.assert_array_equal(order.global_batch_indices(7, 2, batch, n),
                                np.concatenate([p0[20:], p1[:5]]))
  np.testing.assert_array_equal(order.global_batch_indices(7, 5, batch, n),
                                order.epoch_permutation(7, 2, n)[:10])
  # A run started at step 4 yields what an uninterrupted run yields at its
  # fifth batch: images and augmentation alike (no replay from the start).
  src = _numbered_source(n_train=n)
  config = _config(augment="crop_flip")
  run = pipeline.train_iterator(src, config, global_batch_size=batch, seed=7)
  batches = [next(run) for _ in range(6)]
  resumed = pipeline.train_iterator(src, config, global_batch_size=batch,
                                    seed=7, start_step=4)
  for step in (4, 5):
    got = next(resumed)
    np.testing.assert_array_equal(
        got["label"], order.global_batch_indices(7, step, batch, n))
    np.testing.assert_array_equal(got["image"], batches[step]["image"])


def test_streamed_split_resumes_at_its_step():
  # A split read as a stream (data.cache=False) keeps each process's own
  # order, but a run started at step s still yields batch s of an
  # uninterrupted run: the epoch is reshuffled from (seed, epoch) and
  # skipped into.
  src = _numbered_source(n_train=25)
  config = _config(cache=False, augment="crop_flip")
  run = pipeline.train_iterator(src, config, global_batch_size=10, seed=3)
  batches = [next(run) for _ in range(6)]
  epochs = np.concatenate([b["label"] for b in batches])
  assert sorted(epochs[:25].tolist()) == list(range(25))
  resumed = pipeline.train_iterator(src, config, global_batch_size=10, seed=3,
                                    start_step=3)
  for step in (3, 4, 5):
    got = next(resumed)
    np.testing.assert_array_equal(got["label"], batches[step]["label"])
    np.testing.assert_array_equal(got["image"], batches[step]["image"])


def _shifted_flipped(original, pad):
  """Every crop of the zero-padded image, and their mirror images."""
  size = original.shape[0]
  padded = np.pad(original, ((pad, pad), (pad, pad), (0, 0)))
  out = []
  for dy in range(2 * pad + 1):
    for dx in range(2 * pad + 1):
      crop = padded[dy:dy + size, dx:dx + size]
      out.extend([crop, crop[:, ::-1]])
  return out


def test_crop_flip_outputs_are_shifted_flipped_originals():
  src = _numbered_source(n_train=6)
  images, _ = src.arrays("train")
  config = _config(augment="crop_flip", crop_padding="zero", mean=(0, 0, 0),
                   std=(1 / 255, 1 / 255, 1 / 255))
  it = pipeline.train_iterator(src, config, global_batch_size=6, seed=3)
  variants_seen = set()
  for _ in range(4):
    batch = next(it)
    for image, label in zip(batch["image"], batch["label"]):
      pixels = np.rint(image).astype(np.uint8)
      matches = [k for k, v in enumerate(_shifted_flipped(images[label], 4))
                 if np.array_equal(v, pixels)]
      assert matches, "not a padded crop or flip of its original"
      variants_seen.add(matches[0])
  assert len(variants_seen) > 4  # Random crops, not one fixed offset.


def test_inception_crop_resizes_a_box_and_flips():
  # Columns ramp 0..252: any box resized to 8 x 8 stays monotonic in x,
  # increasing or (flipped) decreasing, and constant down each column (up to
  # one level: float rounding of the bicubic weights).
  size = 64
  ramp = np.broadcast_to((np.arange(size) * 4)[None, :, None],
                         (size, size, 3)).astype(np.uint8)
  src = _constant_source(0, n=8, size=size)
  for split in ("train", "test"):
    src.arrays(split)[0][:] = ramp
  config = _config(augment="inception", mean=(0, 0, 0),
                   std=(1 / 255, 1 / 255, 1 / 255))
  it = pipeline.train_iterator(src, config, global_batch_size=8, seed=0)
  directions = set()
  for _ in range(4):
    for image in next(it)["image"]:
      assert image.shape == (8, 8, 3)
      np.testing.assert_allclose(image, np.broadcast_to(image[:1], image.shape),
                                 atol=1.0)
      row = image[0, :, 0]
      steps = np.diff(row)
      assert np.all(steps >= -1.0) or np.all(steps <= 1.0)
      directions.add(bool(row[-1] > row[0]))
  assert directions == {True, False}  # Both flipped and unflipped.


def test_unknown_augment_is_named():
  with pytest.raises(ValueError, match="config.data.augment='cutout'"):
    pipeline.train_iterator(_numbered_source(), _config(augment="cutout"),
                            global_batch_size=4, seed=0)


# ------------------------------------------------------------- preprocess


def test_eval_geometry_identity_resize_and_crop():
  config = _config(image_size=32)
  image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)
  np.testing.assert_array_equal(preprocess.eval_geometry(image, config), image)
  # Shorter side 64 -> 32 (scale 1/2), then the central 32 columns of 48.
  # Bicubic interpolation reproduces a linear ramp exactly: output column j
  # samples input x = 2 (j + 8) + 0.5, where the ramp 2x is 4j + 33.
  ramp = np.broadcast_to((2 * np.arange(96))[None, :, None],
                         (64, 96, 3)).astype(np.uint8)
  out = preprocess.eval_geometry(ramp, _config(image_size=32, eval_resize=32))
  assert out.shape == (32, 32, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(
      out, np.broadcast_to((4 * np.arange(32) + 33)[None, :, None], out.shape))
  # Without eval_resize a non-square image is resized to S and center-cropped.
  out = preprocess.eval_geometry(ramp, config)
  np.testing.assert_array_equal(
      out, np.broadcast_to((4 * np.arange(32) + 33)[None, :, None], out.shape))
  # The same in a tf.data graph with unknown static shape.
  ds = tf.data.Dataset.from_generator(
      lambda: iter([ramp]),
      output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
  graph = next(iter(ds.map(lambda x: preprocess.eval_geometry(x, config))))
  np.testing.assert_array_equal(graph.numpy(), out)
  with pytest.raises(ValueError, match="config.data.eval_resize=16"):
    preprocess.eval_geometry(ramp, _config(image_size=32, eval_resize=16))


def test_normalize_numpy_and_tf_agree_and_check_channels():
  images = np.random.default_rng(1).integers(0, 256, (2, 4, 4, 3), np.uint8)
  config = _config()
  np_out = preprocess.normalize(images, config)
  tf_out = preprocess.normalize(tf.constant(images), config).numpy()
  np.testing.assert_allclose(np_out, tf_out, rtol=1e-6)
  np.testing.assert_allclose(np_out, (images / 255.0 - MEAN) / STD, rtol=1e-5)
  np.testing.assert_allclose(preprocess.denormalize(np_out, config), images,
                             atol=1e-3)
  gray = _config(mean=(0.5,), std=(0.25,))
  np.testing.assert_allclose(preprocess.normalize(images, gray),
                             (images / 255.0 - 0.5) / 0.25, rtol=1e-5)
  with pytest.raises(ValueError, match="config.data.mean has 2 values for "
                     "images with 3 channels"):
    preprocess.normalize(images, _config(mean=(0.1, 0.2)))


def test_channel_mean_std_matches_numpy():
  src = _numbered_source(n_train=20)
  images, _ = src.arrays("train")
  mean, std = pipeline.channel_mean_std(src, "train")
  x = images.reshape(-1, 3) / 255.0
  np.testing.assert_allclose(mean, x.mean(0), rtol=1e-10)
  np.testing.assert_allclose(std, x.std(0), rtol=1e-8)
  mean5, _ = pipeline.channel_mean_std(src, "train", num_examples=5)
  np.testing.assert_allclose(mean5, (images[:5].reshape(-1, 3) / 255.0).mean(0))
