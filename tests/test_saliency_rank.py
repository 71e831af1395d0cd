"""Ranking maps into removal-order levels, and the saliency grid figure."""

import math

import jax
import numpy as np
import pytest
from matplotlib import image as mpimg

from roar_jax.saliency import ranking
from roar_jax.saliency import visualize


def test_known_map_pixel_granularity():
  # 1 x 2 x 5 image, 2 channels: pixel score = sum_c |map|.
  m = np.zeros((1, 2, 5, 2), np.float32)
  score = np.array([[3, 0, 7, -1, 5], [2, 7, 0, 9, 1]], np.float32)
  m[0, ..., 0] = score / 2
  m[0, ..., 1] = -score / 2  # Signs cancel only in the 'signed' transform.
  levels = np.asarray(ranking.rank(m))
  assert levels.shape == (1, 2, 5) and levels.dtype == np.uint8
  # |score| descending, ties by flat index: 9 (8), 7 (2), 7 (6), 5 (4),
  # 3 (0), 2 (5), |-1| (3), 1 (9), 0 (1), 0 (7). P = 10: level = 10 * rank.
  order = [8, 2, 6, 4, 0, 5, 3, 9, 1, 7]
  expected = np.empty(10, np.uint8)
  expected[order] = 10 * np.arange(10)
  np.testing.assert_array_equal(levels.reshape(-1), expected)
  np.testing.assert_array_equal(
      np.asarray(ranking.rank(m, transform="square")), levels)


def test_known_map_value_granularity_and_signed():
  m = np.array([0.5, -2.0, 2.0, 0.0, -0.0, 1.0], np.float32).reshape(
      1, 1, 2, 3)
  # abs: 2 (1), 2 (2), 1 (5), .5 (0), 0 (3), 0 (4); P = 6.
  levels = np.asarray(ranking.rank(m, granularity="value"))
  assert levels.shape == (1, 1, 2, 3)
  ranks = np.empty(6, int)
  ranks[[1, 2, 5, 0, 3, 4]] = np.arange(6)
  np.testing.assert_array_equal(levels.reshape(-1), 100 * ranks // 6)
  # signed: largest positive first; -0.0 ties with 0.0.
  levels = np.asarray(ranking.rank(m, granularity="value",
                                   transform="signed"))
  ranks[[2, 5, 0, 3, 4, 1]] = np.arange(6)
  np.testing.assert_array_equal(levels.reshape(-1), 100 * ranks // 6)


@pytest.mark.parametrize("granularity", ["pixel", "value"])
def test_thresholds_remove_exact_fractions(granularity):
  rng = np.random.default_rng(0)
  maps = rng.normal(size=(3, 17, 13, 3)).astype(np.float32)
  maps[0, :5] = 0.0  # Many ties.
  levels = np.asarray(ranking.rank(maps, granularity=granularity))
  p = levels[0].size
  for q in (1, 10, 33, 50, 90, 100):
    removed = (levels < q).reshape(3, -1).sum(axis=1)
    np.testing.assert_array_equal(removed, math.ceil(q * p / 100))
  assert abs(int((levels[0] < 10).sum()) - p / 10) <= 1
  # The most important positions get the lowest levels.
  score = ranking.scores(maps, granularity)
  top = np.asarray(score[1]).reshape(-1).argmax()
  assert levels[1].reshape(-1)[top] == 0
  # Deterministic, and a 1% band holds the top-scoring positions.
  np.testing.assert_array_equal(
      np.asarray(ranking.rank(maps, granularity=granularity)), levels)


def test_sharded_rank_equals_one_device():
  maps = np.random.default_rng(1).normal(size=(8, 5, 4, 3)).astype(
      np.float32)
  mesh = jax.make_mesh((8,), ("data",))
  sharded = ranking.rank(
      jax.device_put(maps, jax.NamedSharding(mesh, jax.P("data"))))
  assert sharded.sharding.spec[0] == "data"
  np.testing.assert_array_equal(sharded, ranking.rank(maps))


def test_rank_errors():
  with pytest.raises(ValueError, match="granularity"):
    ranking.rank(np.zeros((1, 2, 2, 1)), granularity="channel")
  with pytest.raises(ValueError, match="transform"):
    ranking.rank(np.zeros((1, 2, 2, 1)), transform="relu")
  with pytest.raises(ValueError, match="maps"):
    ranking.rank(np.zeros((2, 2, 1)))


def test_visualize_grid(tmp_path):
  rng = np.random.default_rng(2)
  images = rng.normal(size=(3, 8, 8, 3)).astype(np.float32)
  hot = np.zeros((3, 8, 8, 3), np.float32)
  hot[:, 2, 5] = 1.0
  path = visualize.save_grid(str(tmp_path / "grid.png"), images,
                             {"hot": hot, "noise": images},
                             row_labels=["a", "b", "c"])
  png = mpimg.imread(path)
  # Three rows of cells, three columns (image + two estimators).
  assert png.shape[0] > 2.5 * 1.4 * 100 * 0.9 and png.shape[1] > (
      3 * 1.4 * 100 * 0.9)
  assert list(tmp_path.iterdir()) == [tmp_path / "grid.png"]
  shown = visualize.map_for_display(hot[0])
  assert shown[2, 5] == 1.0 and shown.sum() == 1.0
  img = visualize.image_for_display(images[0])
  assert img.min() == 0.0 and img.max() == 1.0
  with pytest.raises(ValueError, match="missing"):
    visualize.save_grid(str(tmp_path / "x.png"), images, {"hot": hot},
                        estimators=["hot", "missing"])
