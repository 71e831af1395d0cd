"""Row-wise scores of flattened maps, vectorized over the batch on the host.

The repaired tests score every randomization step with a rank correlation,
a histogram entropy or a 1-D SSIM of each image's flattened maps. SciPy and
scikit-image compute these one image at a time (`stats.rankdata`'s stable
merge sort, `np.histogram`, `structural_similarity`); here one NumPy call
handles all the images, with the same float64 arithmetic, so the values
are those of the per-image functions (tests/test_sanity_scoring.py checks
them on arrays with ties).

They stay on the host rather than in a jitted JAX function: XLA's CPU sort
of 64 x 3072 float32 takes about 35 ms, NumPy's argsort 2 ms, and the bins
of `np.histogram` are float64 edges that float32 (JAX's default here)
cannot hold; the maps come back to the host for the records anyway.
"""

import numpy as np
from scipy import ndimage
from scipy import special


def _rows(x) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"expected rows [N, D], got shape {x.shape}")
  return x


def average_ranks(x) -> np.ndarray:
  """Ranks 1..D of each row, ties given their mean rank.

  `scipy.stats.rankdata(x, axis=1)` (method 'average') for finite x: a tie
  group occupying sorted positions first..last gets (first + last) / 2 + 1,
  whatever order the sort left it in, so an unstable sort suffices.

  Args:
    x: [N, D] finite values.

  Returns:
    float64 [N, D]: whole or half-integer ranks.
  """
  x = _rows(x)
  n, d = x.shape
  order = np.argsort(x, axis=1)
  ordered = np.take_along_axis(x, order, axis=1)
  starts = np.empty((n, d), bool)
  starts[:, 0] = True
  np.not_equal(ordered[:, 1:], ordered[:, :-1], out=starts[:, 1:])
  # Over the rows laid end to end (each row opens a group): each group's
  # first and last flat position, and each position's group; the rank in
  # the row is the flat one less the row's offset.
  starts = starts.ravel()
  first = np.flatnonzero(starts)
  last = np.append(first[1:], n * d) - 1
  group = np.cumsum(starts, dtype=np.int32) - 1
  offsets = np.arange(n)[:, None] * d
  ranks = np.empty(n * d)
  ranks[(order + offsets).ravel()] = ((first + last) / 2.0 + 1.0)[group]
  ranks = ranks.reshape(n, d)
  ranks -= offsets
  return ranks


def centered(x) -> tuple[np.ndarray, np.ndarray]:
  """Each row of x [N, D] less its mean (float64), and its sum of squares:
  one side of `pearson`, to be reused against many others."""
  x = np.asarray(x, np.float64)
  x = x - x.mean(axis=1, keepdims=True)
  return x, (x * x).sum(axis=1)


def pearson_centered(a, b) -> np.ndarray:
  """`pearson` of two `centered` sides."""
  (a, ssa), (b, ssb) = a, b
  den = np.sqrt(ssa * ssb)
  num = (a * b).sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def pearson(a, b) -> np.ndarray:
  """Pearson correlation of each row pair of a, b [N, D] in float64; NaN
  where a row is constant."""
  return pearson_centered(centered(a), centered(b))


def spearman(a, b) -> np.ndarray:
  """Spearman's rank correlation of each row pair of a, b [N, D] (average
  ranks for ties, as `scipy.stats.spearmanr`); NaN where a row is
  constant."""
  a, b = _rows(a), _rows(b)
  if a.shape != b.shape:
    raise ValueError(f"rows to compare differ in shape: {a.shape} vs "
                     f"{b.shape}")
  return pearson(average_ranks(a), average_ranks(b))


def histogram_counts(x, n_bins: int) -> np.ndarray:
  """`np.histogram(row, bins=n_bins)[0]` of each row of x [N, D].

  NumPy's bins: float64 edges `np.linspace(min, max, n_bins + 1)` of the
  row's range (min - 0.5, max + 0.5 for a constant row); entry x falls in
  bin k where edge k <= x < edge k + 1, the last bin closed. So the count
  below each inner edge, read off the sorted row, gives every bin.

  Args:
    x: [N, D] finite values (compared in float64).
    n_bins: equal-width bins per row.

  Returns:
    int64 [N, n_bins], each row summing to D.
  """
  x = np.asarray(_rows(x), np.float64)
  ordered = np.sort(x, axis=1)
  lo, hi = ordered[:, 0], ordered[:, -1]
  flat = lo == hi
  lo, hi = np.where(flat, lo - 0.5, lo), np.where(flat, hi + 0.5, hi)
  counts = np.empty((len(x), n_bins), np.int64)
  for i, row in enumerate(ordered):
    # One linspace per row: its rounding is that of np.histogram's edges.
    inner = np.linspace(lo[i], hi[i], n_bins + 1)[1:-1]
    below = np.searchsorted(row, inner, side="left")
    counts[i] = np.diff(below, prepend=0, append=x.shape[1])
  return counts


def histogram_entropy(x, n_bins: int) -> np.ndarray:
  """`scipy.stats.entropy(np.histogram(row, n_bins)[0])` of each row: the
  discrete entropy in nats (0 for a constant row)."""
  counts = histogram_counts(x, n_bins).astype(np.float64)
  p = counts / counts.sum(axis=1, keepdims=True)
  return special.entr(p).sum(axis=1)


def ssim(a, b, *, win_size: int, data_range) -> np.ndarray:
  """`skimage.metrics.structural_similarity` of each row pair as 1-D
  signals: uniform window of `win_size` (reflected at the ends), sample
  covariance, K1 = 0.01, K2 = 0.03, the mean over positions at least
  win_size // 2 from either end.

  Args:
    a, b: [N, D] rows, D >= win_size.
    win_size: odd window length.
    data_range: [N] (or a scalar): the range of each pair.

  Returns:
    float64 [N].
  """
  a = np.asarray(_rows(a), np.float64)
  b = np.asarray(_rows(b), np.float64)
  if a.shape != b.shape:
    raise ValueError(f"rows to compare differ in shape: {a.shape} vs "
                     f"{b.shape}")
  if a.shape[1] < win_size or win_size % 2 == 0:
    raise ValueError(f"win_size={win_size} must be odd and at most the row "
                     f"length {a.shape[1]}")
  mean = lambda v: ndimage.uniform_filter1d(v, win_size, axis=1)
  ux, uy = mean(a), mean(b)
  cov_norm = win_size / (win_size - 1)
  vx = cov_norm * (mean(a * a) - ux * ux)
  vy = cov_norm * (mean(b * b) - uy * uy)
  vxy = cov_norm * (mean(a * b) - ux * uy)
  r = np.reshape(np.asarray(data_range, np.float64), (-1, 1))
  c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
  s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / (
      (ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
  pad = (win_size - 1) // 2
  return s[:, pad:s.shape[1] - pad].mean(axis=1, dtype=np.float64)
