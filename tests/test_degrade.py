"""Degradation: exact removed fractions, fills, ROAD imputation, means."""


import numpy as np
import pytest

from roar_jax import levels as levels_lib
from roar_jax.data import degradation as degrade_lib
from roar_jax.data import source_protocol as source_lib

THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)
# ROAD's weights: 1/6 for the 4 direct neighbours, 1/12 for the 4 diagonal.
WEIGHTS = {(dy, dx): (1 / 12 if dy and dx else 1 / 6)
           for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx}


def _ranks(rng, batch, shape):
  """Random removal orders: rank 0 = most important, per image."""
  n = int(np.prod(shape))
  return np.stack([rng.permutation(n).reshape(shape) for _ in range(batch)])


def _levels(ranks):
  """Quantize ranks: level q holds ranks in [q%, (q+1)%) of all positions."""
  n = int(np.prod(ranks.shape[1:]))
  return (ranks * 100 // n).astype(np.uint8)


def _hole_levels(holes):
  """Levels that make exactly `holes` the top 1% (removed by ROAR t=0.01)."""
  return np.where(holes, 0, 99).astype(np.uint8)


@pytest.mark.parametrize("granularity", ["pixel", "value"])
@pytest.mark.parametrize("mode", ["roar", "kar"])
def test_channel_mean_removes_exact_fraction_of_top_positions(granularity,
                                                              mode):
  rng = np.random.default_rng(0)
  # 9 x 11 = 99 pixels (297 values): not a multiple of 100, so the
  # quantization to percent levels matters.
  images = rng.integers(0, 256, (3, 9, 11, 3), dtype=np.uint8)
  shape = (9, 11) if granularity == "pixel" else (9, 11, 3)
  n = int(np.prod(shape))
  ranks = _ranks(rng, 3, shape)
  levels = _levels(ranks)
  mean = np.array([12.4, 200.5, 77.6])
  fill = np.array([12, 201, 78], dtype=np.uint8)  # Rounded half up.
  for t in THRESHOLDS:
    out = degrade_lib.degrade(images, levels, threshold=t, mode=mode,
                              fill="channel_mean", channel_mean=mean)
    # Level < k  <=>  100 rank < k n: the top positions, exactly.
    top = ranks * 100 < round(100 * t) * n
    removed = top if mode == "roar" else ~top
    fraction = t if mode == "roar" else 1 - t
    counts = removed.reshape(3, -1).sum(1)
    assert np.all(np.abs(counts - fraction * n) <= 1), (t, counts)
    if granularity == "pixel":
      removed = np.repeat(removed[..., None], 3, axis=-1)
    expected = np.where(removed, fill, images)
    np.testing.assert_array_equal(out, expected)
  # One image without a batch dimension gives the same as in a batch.
  single = degrade_lib.degrade(images[1], levels[1], threshold=0.3, mode=mode,
                               fill="channel_mean", channel_mean=mean)
  batch = degrade_lib.degrade(images, levels, threshold=0.3, mode=mode,
                              fill="channel_mean", channel_mean=mean)
  np.testing.assert_array_equal(single, batch[1])


@pytest.mark.parametrize("t", THRESHOLDS)
def test_kar_and_roar_split_positions(t):
  rng = np.random.default_rng(1)
  levels = _levels(_ranks(rng, 4, (7, 13)))
  roar = levels_lib.removal_mask(levels, threshold=t, mode="roar")
  kar = levels_lib.removal_mask(levels, threshold=t, mode="kar")
  # KAR at t keeps exactly what ROAR at t removes.
  np.testing.assert_array_equal(kar, ~roar)
  # KAR at t removes as many positions as ROAR at 1 - t (the bottom rather
  # than the top ones), up to one position of rounding.
  roar_complement = levels_lib.removal_mask(levels, threshold=1 - t,
                                             mode="roar")
  diff = kar.reshape(4, -1).sum(1) - roar_complement.reshape(4, -1).sum(1)
  assert np.all(np.abs(diff) <= 1)
  # At t = 0.5 they are exactly complementary.
  if t == 0.5:
    np.testing.assert_array_equal(kar, ~roar_complement)


def test_threshold_levels():
  assert levels_lib.threshold_level(0.0) == 0
  assert levels_lib.threshold_level(0.29) == 29  # 28.999... rounds up.
  assert levels_lib.threshold_level(0.125) == 13  # Half up.
  assert levels_lib.threshold_level(1.0) == 100


@pytest.mark.parametrize("granularity", ["pixel", "value"])
def test_noisy_linear_keeps_kept_values_and_changes_removed(granularity):
  rng = np.random.default_rng(2)
  images = rng.integers(0, 256, (2, 12, 12, 3), dtype=np.uint8)
  shape = (12, 12) if granularity == "pixel" else (12, 12, 3)
  levels = _levels(_ranks(rng, 2, shape))
  for mode in ("roar", "kar"):
    out = degrade_lib.degrade(images, levels, threshold=0.5, mode=mode,
                              fill="noisy_linear", indices=[4, 9], seed=3)
    removed = levels_lib.removal_mask(levels, threshold=0.5, mode=mode)
    if granularity == "pixel":
      removed = np.repeat(removed[..., None], 3, axis=-1)
    np.testing.assert_array_equal(out[~removed], images[~removed])
    # Random images: imputed values are smooth averages, rarely the original.
    assert np.mean(out[removed] != images[removed]) > 0.9


def _expected_fill(image01, hole_rows, hole_cols):
  """Weighted neighbour mean, renormalized over in-image neighbours."""
  height, width = image01.shape[:2]
  out = []
  for r, c in zip(hole_rows, hole_cols):
    total = weight = 0.0
    for (dy, dx), w in WEIGHTS.items():
      if 0 <= r + dy < height and 0 <= c + dx < width:
        total = total + w * image01[r + dy, c + dx]
        weight += w
    out.append(total / weight)
  return np.array(out)


@pytest.mark.parametrize("granularity", ["pixel", "value"])
def test_noisy_linear_fills_isolated_holes_with_neighbour_mean_plus_noise(
    granularity):
  rng = np.random.default_rng(3)
  size, num_images = 16, 30
  # Holes 3 apart (never neighbours of each other), including the corners
  # and edges (rows and columns 0 and 15), where the weights must be
  # renormalized.
  lattices = np.zeros((3, size, size), bool)
  for c in range(3):
    lattices[c, c::3, 0::3] = True
  images = rng.integers(64, 192, (num_images, size, size, 3), dtype=np.uint8)
  if granularity == "pixel":
    holes = np.broadcast_to(lattices[0], (num_images, size, size))
  else:
    # Each channel its own holes: the lattice shifted by one row per channel.
    holes = np.broadcast_to(np.moveaxis(lattices, 0, -1),
                            (num_images, size, size, 3))
  out = degrade_lib.degrade(images, _hole_levels(holes), threshold=0.01,
                            mode="roar", fill="noisy_linear",
                            indices=np.arange(num_images), seed=0)
  residuals = []
  for i in range(num_images):
    x = images[i] / 255.0
    for c in range(3):
      mask = holes[i] if granularity == "pixel" else holes[i, ..., c]
      rows, cols = np.nonzero(mask)
      expected = _expected_fill(x[..., c], rows, cols)
      residuals.append(out[i, rows, cols, c] / 255.0 - expected)
      keep = ~mask
      np.testing.assert_array_equal(out[i][keep][:, c], images[i][keep][:, c])
  residuals = np.concatenate(residuals)
  assert residuals.size > 2000
  # Noise N(0, 0.01^2) plus uniform quantization error of 1/255 width.
  expected_std = np.sqrt(0.01**2 + (1 / 255)**2 / 12)
  assert abs(residuals.std() / expected_std - 1) < 0.08
  assert abs(residuals.mean()) < 4 * expected_std / np.sqrt(residuals.size)


def test_noisy_linear_fills_constant_image_with_the_constant():
  rng = np.random.default_rng(4)
  images = np.full((4, 20, 20, 3), 100, dtype=np.uint8)
  levels = _levels(_ranks(rng, 4, (20, 20)))
  out = degrade_lib.degrade(images, levels, threshold=0.7, mode="roar",
                            fill="noisy_linear", indices=[0, 1, 2, 3])
  removed = levels_lib.removal_mask(levels, threshold=0.7, mode="roar")
  diff = out[removed].astype(float) - 100
  std = 0.01 * 255
  assert abs(diff.mean()) < 4 * std / np.sqrt(diff.size)
  assert abs(diff.std() / np.sqrt(std**2 + 1 / 12) - 1) < 0.08
  assert np.abs(diff).max() <= 6 * std


def test_noisy_linear_refuses_removing_everything():
  rng = np.random.default_rng(5)
  images = rng.integers(0, 256, (1, 6, 6, 3), dtype=np.uint8)
  levels = _levels(_ranks(rng, 1, (6, 6)))
  for mode, t in (("roar", 1.0), ("kar", 0.0)):
    with pytest.raises(ValueError, match="nothing is left to interpolate"):
      degrade_lib.degrade(images, levels, threshold=t, mode=mode,
                          fill="noisy_linear")
  # The constant fill has no such limit.
  out = degrade_lib.degrade(images, levels, threshold=1.0, mode="roar",
                            fill="channel_mean", channel_mean=[1, 2, 3])
  assert np.all(out == np.array([1, 2, 3], np.uint8))


def test_noisy_linear_noise_is_a_function_of_seed_and_index():
  rng = np.random.default_rng(6)
  images = rng.integers(0, 256, (3, 10, 10, 3), dtype=np.uint8)
  levels = _levels(_ranks(rng, 3, (10, 10)))
  kwargs = dict(threshold=0.4, mode="roar", fill="noisy_linear")
  batch = degrade_lib.degrade(images, levels, indices=[7, 8, 9], seed=1,
                              **kwargs)
  again = degrade_lib.degrade(images, levels, indices=[7, 8, 9], seed=1,
                              **kwargs)
  np.testing.assert_array_equal(batch, again)
  # Alone, or in another batch position: the same fill for the same index.
  alone = degrade_lib.degrade(images[2], levels[2], indices=9, seed=1,
                              **kwargs)
  np.testing.assert_array_equal(alone, batch[2])
  reordered = degrade_lib.degrade(images[::-1], levels[::-1],
                                  indices=[9, 8, 7], seed=1, **kwargs)
  np.testing.assert_array_equal(reordered[::-1], batch)
  # Another index or another seed: other noise.
  other_index = degrade_lib.degrade(images[2], levels[2], indices=10, seed=1,
                                    **kwargs)
  other_seed = degrade_lib.degrade(images[2], levels[2], indices=9, seed=2,
                                   **kwargs)
  assert np.any(other_index != batch[2])
  assert np.any(other_seed != batch[2])


def test_degrade_argument_errors():
  images = np.zeros((2, 4, 4, 3), np.uint8)
  levels = np.zeros((2, 4, 4), np.uint8)
  ok = dict(threshold=0.5, mode="roar", fill="channel_mean",
            channel_mean=[1, 2, 3])
  cases = [
      (dict(threshold=1.5), "threshold"),
      (dict(threshold=float("nan")), "threshold"),
      (dict(mode="remove"), "mode"),
      (dict(fill="zeros"), "fill"),
      (dict(channel_mean=None), "channel_mean"),
      (dict(channel_mean=[0.5, 0.4]), "channel_mean"),
      (dict(channel_mean=[300, 0, 0]), "channel_mean"),
  ]
  for change, field in cases:
    with pytest.raises(ValueError, match=field):
      degrade_lib.degrade(images, levels, **{**ok, **change})
  with pytest.raises(ValueError, match="levels"):
    degrade_lib.degrade(images, np.zeros((2, 4, 5), np.uint8), **ok)
  with pytest.raises(ValueError, match="levels"):
    degrade_lib.degrade(images, np.full((2, 4, 4), 100, np.uint8), **ok)
  with pytest.raises(ValueError, match="images"):
    degrade_lib.degrade(images.astype(np.float32), levels, **ok)
  with pytest.raises(ValueError, match="indices"):
    degrade_lib.degrade(images, levels, threshold=0.5, mode="roar",
                        fill="noisy_linear", indices=[1, 2, 3])


def _array_source(name="toy", n_train=37, n_test=5, channels=3, seed=0):
  rng = np.random.default_rng(seed)
  shape = (6, 5, channels)
  splits = {s: (rng.integers(0, 256, (n,) + shape, dtype=np.uint8),
                rng.integers(0, 4, n))
            for s, n in (("train", n_train), ("test", n_test))}
  info = source_lib.DatasetInfo(name=name, num_classes=4, image_shape=shape,
                                num_examples={"train": n_train,
                                              "test": n_test})
  return source_lib.ArraySource(info, splits)


def test_channel_mean_matches_numpy(tmp_path):
  src = _array_source(n_train=300)  # More than one streaming batch.
  images = src.arrays("train")[0]
  expected = images.reshape(-1, 3).astype(np.float64).mean(0)
  np.testing.assert_allclose(degrade_lib.channel_mean(src), expected,
                             rtol=1e-12)
  np.testing.assert_allclose(
      degrade_lib.channel_mean(src, "test"),
      src.arrays("test")[0].reshape(-1, 3).mean(0), rtol=1e-12)
