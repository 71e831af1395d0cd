"""Synthetic datasets: toy images with known evidence, ROAR's linear data."""

import math

import numpy as np
import pytest

from roar_jax.data import toy_builder
from roar_jax.data import sources
from roar_jax.data import synthetic

TOY = {"num_train": 240, "num_test": 120, "num_classes": 4, "image_size": 32,
       "seed": 3}


def _patches(images, masks, patch_size):
  """The P x P patch under each mask, float [N, P, P, C]."""
  out = []
  for image, mask in zip(images, masks):
    rows, cols = np.nonzero(mask)
    r, c = rows.min(), cols.min()
    out.append(image[r:r + patch_size, c:c + patch_size].astype(np.float64))
  return np.stack(out)


def _template_predict(patches, patterns):
  """Nearest class pattern by correlation with the centered patch."""
  centered = patches - 128.0
  scores = np.einsum("nhwc,khwc->nk", centered, patterns)
  return scores.argmax(-1)


# ---------------------------------------------------------------- toy images


def test_noise_free_toy_images_are_the_patterns_exactly_where_masks_are():
  images, labels, masks = synthetic.make_toy(
      64, seed=0, background_std=0.0, pattern_noise=0.0, pattern_seed=5)
  patterns = synthetic.toy_patterns(4, 6, pattern_seed=5)
  corners = synthetic.toy_locations(32, 6, 4)
  assert images.dtype == np.uint8 and images.shape == (64, 32, 32, 3)
  assert labels.dtype == np.int64 and masks.dtype == bool
  # Outside the mask: exactly the mid-gray background.
  assert np.all(images[~masks] == 128)
  for image, label, mask in zip(images, labels, masks):
    # The mask is one 6x6 square at one of the 4 known corners...
    rows, cols = np.nonzero(mask)
    assert mask.sum() == 36
    assert (rows.min(), cols.min()) in {tuple(c) for c in corners}
    assert rows.max() - rows.min() == 5 and cols.max() - cols.min() == 5
    # ...holding 128 + 80 * the label's sign pattern.
    r, c = rows.min(), cols.min()
    np.testing.assert_array_equal(image[r:r + 6, c:c + 6],
                                  128 + 80 * patterns[label])


def test_toy_labels_are_balanced_and_positions_independent_of_label():
  _, labels, masks = synthetic.make_toy(4000, seed=1)
  np.testing.assert_array_equal(np.bincount(labels), [1000] * 4)
  corners = synthetic.toy_locations(32, 6, 4)
  where = np.array([[tuple(c) for c in corners].index(
      tuple(np.argwhere(m).min(0))) for m in masks])
  counts = np.zeros((4, 4))
  np.add.at(counts, (labels, where), 1)
  # 250 expected per (class, position); 4 standard deviations of a binomial.
  assert np.abs(counts - 250).max() < 4 * math.sqrt(250 * 0.75)


def test_toy_background_carries_no_class_information():
  images, labels, masks = synthetic.make_toy(4000, seed=2)
  outside = ~masks[..., None] & np.ones((1, 1, 1, 3), bool)
  means = []
  for k in range(4):
    sel = labels == k
    values = images[sel].astype(np.float64)
    counted = outside[sel]
    # Per-position mean of the background over the images of class k.
    means.append((values * counted).sum(0) / np.maximum(counted.sum(0), 1))
  means = np.stack(means)
  # Every class sees N(128, 48^2) background: the class means of each pixel
  # differ only by sampling noise (std 48 / sqrt(~940) ~ 1.6; 6 sigma).
  assert np.abs(means - means.mean(0)).max() < 6 * 48 / math.sqrt(900)
  assert abs(means.mean() - 128.0) < 0.5


def test_class_evidence_is_in_the_pattern_only():
  images, labels, masks = synthetic.make_toy(2000, seed=4, pattern_seed=7)
  patterns = synthetic.toy_patterns(4, 6, pattern_seed=7)
  # The nearest pattern under the mask recovers every label...
  pred = _template_predict(_patches(images, masks, 6), patterns)
  assert np.mean(pred == labels) == 1.0
  # ...while the same classifier on a background patch is at chance.
  shifted = np.roll(masks, 16, axis=2)
  shifted &= ~masks
  keep = shifted.reshape(len(masks), -1).sum(1) == 36
  pred_bg = _template_predict(_patches(images[keep], shifted[keep], 6),
                              patterns)
  assert abs(np.mean(pred_bg == labels[keep]) - 0.25) < 0.06


def test_toy_is_deterministic_per_seed():
  a = synthetic.make_toy(50, seed=9)
  b = synthetic.make_toy(50, seed=9)
  c = synthetic.make_toy(50, seed=10)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[0], c[0])


def test_toy_source_splits_share_patterns_and_masks_align():
  src = synthetic.toy_source(TOY)
  assert src.info.num_classes == 4 and src.info.image_shape == (32, 32, 3)
  assert src.info.num_examples == {"train": 240, "test": 120}
  patterns = synthetic.toy_patterns(4, 6, pattern_seed=TOY["seed"])
  train_images, train_labels = src.arrays("train")
  test_images, test_labels = src.arrays("test")
  # Different per-image draws: no test image repeats a training image.
  flat_train = {im.tobytes() for im in train_images}
  assert not any(im.tobytes() in flat_train for im in test_images)
  for split, images, labels in (("train", train_images, train_labels),
                                ("test", test_images, test_labels)):
    masks = synthetic.toy_masks(TOY, split)
    assert masks.shape == images.shape[:3]
    pred = _template_predict(_patches(images, masks, 6), patterns)
    np.testing.assert_array_equal(pred, labels)


def test_toy_config_errors_name_the_field():
  with pytest.raises(ValueError, match="config.data.toy.bogus"):
    synthetic.toy_source({"bogus": 1})
  with pytest.raises(ValueError, match="patch_size=20"):
    synthetic.make_toy(4, seed=0, patch_size=20)


def test_toy_through_tfds_equals_the_in_memory_source(tmp_path):
  path = toy_builder.prepare_toy(TOY, str(tmp_path))
  assert toy_builder.prepare_toy(TOY, str(tmp_path)) == path  # Found again.
  read = sources.DirectorySource(path)
  memory = synthetic.toy_source(TOY)
  assert read.info.num_examples == memory.info.num_examples
  assert read.info.image_shape == (32, 32, 3)
  for split in ("train", "test"):
    got = list(read.load(split).as_numpy_iterator())
    images, labels = memory.arrays(split)
    np.testing.assert_array_equal(np.stack([g["image"] for g in got]), images)
    np.testing.assert_array_equal([g["label"] for g in got], labels)
    np.testing.assert_array_equal([g["index"] for g in got],
                                  np.arange(len(images)))
    stored = read.builder.as_dataset(split=split, shuffle_files=False)
    masks = np.stack([ex["mask"] for ex in stored.as_numpy_iterator()])
    np.testing.assert_array_equal(masks, synthetic.toy_masks(TOY, split))


# ------------------------------------------------------- ROAR's linear data


def _analytic_accuracy(a, d, features):
  """Accuracy of the best linear rule sign(w.x) for sign(z) on `features`.

  x = a z / 10 + d eta + eps / 10 is jointly Gaussian with z: the best linear
  score has correlation rho = sqrt(c' S^-1 c) with z (c = cov(x, z) = a / 10,
  S = cov(x)), and P(sign(s) = sign(z)) = 1/2 + arcsin(rho) / pi.
  """
  a, d = a[features].astype(np.float64), d[features].astype(np.float64)
  cov = np.outer(a, a) / 100 + np.outer(d, d) + np.eye(len(a)) / 100
  c = a / 10
  rho = math.sqrt(c @ np.linalg.solve(cov, c))
  return 0.5 + math.asin(rho) / math.pi


def _least_squares_accuracy(x_train, y_train, x_test, y_test):
  design = np.c_[x_train, np.ones(len(x_train))]
  w, *_ = np.linalg.lstsq(design, y_train.astype(np.float64), rcond=None)
  pred = np.c_[x_test, np.ones(len(x_test))] @ w > 0.5
  return np.mean(pred == y_test)


@pytest.fixture(scope="module")
def linear():
  x, y, a, d = synthetic.make_synthetic_linear(20000, seed=0, dataset_seed=11)
  xt, yt, at, dt = synthetic.make_synthetic_linear(20000, seed=1,
                                                   dataset_seed=11)
  np.testing.assert_array_equal(a, at)  # One dataset: a and d are shared.
  np.testing.assert_array_equal(d, dt)
  return x, y, xt, yt, a, d


def test_linear_data_follows_its_equation(linear):
  x, y, _, _, a, d = linear
  assert x.shape == (20000, 16) and x.dtype == np.float32
  assert y.dtype == np.int64 and set(np.unique(y)) == {0, 1}
  assert np.all(a[4:] == 0) and np.all(a[:4] != 0) and np.all(d != 0)
  assert abs(y.mean() - 0.5) < 0.02
  # cov(x) = a a' / 100 + d d' + I / 100.
  expected = np.outer(a, a) / 100 + np.outer(d, d) + np.eye(16) / 100
  np.testing.assert_allclose(np.cov(x.T), expected, atol=0.05)


def test_only_the_first_four_features_correlate_with_the_label(linear):
  x, y, _, _, a, d = linear
  corr = np.array([np.corrcoef(x[:, i], y)[0, 1] for i in range(16)])
  bound = 4 / math.sqrt(len(y))
  assert np.all(np.abs(corr[4:]) < bound)
  # corr(x_i, [z > 0]) = corr(x_i, z) * sqrt(2 / pi) for Gaussian z.
  analytic = (a[:4] / 10) / np.sqrt(a[:4]**2 / 100 + d[:4]**2 + 0.01)
  np.testing.assert_allclose(corr[:4], analytic * math.sqrt(2 / math.pi),
                             atol=bound)


def test_least_squares_on_the_informative_features_is_accurate(linear):
  x, y, xt, yt, a, d = linear
  informative = list(range(4))
  acc4 = _least_squares_accuracy(x[:, :4], y, xt[:, :4], yt)
  acc16 = _least_squares_accuracy(x, y, xt, yt)
  acc_rest = _least_squares_accuracy(x[:, 4:], y, xt[:, 4:], yt)
  assert acc4 == pytest.approx(_analytic_accuracy(a, d, informative), abs=0.02)
  assert acc16 == pytest.approx(_analytic_accuracy(a, d, list(range(16))),
                                abs=0.02)
  assert acc4 > 0.75
  # Removing the 4 informative features (ROAR with the true ranking) leaves
  # nothing to learn.
  assert abs(acc_rest - 0.5) < 0.02
