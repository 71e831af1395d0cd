"""The batched scores of the repaired tests (sanity/scoring.py) against the
per-image SciPy, NumPy and scikit-image functions they replace, on small
arrays full of ties; `repaired.FlatSpearman`'s ranks of a reference kept
across calls; `maps.explainer` against `maps.explain`."""

import jax
import ml_collections
import numpy as np
import pytest
from scipy import stats
from skimage import metrics as skmetrics

from roar_jax import models
from roar_jax.benchmark.sanity import maps as sanity_maps
from roar_jax.benchmark.sanity import repaired
from roar_jax.benchmark.sanity import scoring
from roar_jax.config import defaults as config_lib


def _tied_rows(seed, n=6, d=60):
  """Rows with runs of zeros, repeated small integers, a constant row and
  a row with one distinct value: the ties that rank averaging must see."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, d))
  x[:, :15] = 0.0
  x[:, 15:30] = rng.integers(-2, 3, (n, 15))
  x[1] = 3.0
  x[2, 1:] = -1.0
  return x


def test_average_ranks_are_scipys_with_ties():
  x = _tied_rows(0)
  want = stats.rankdata(x, axis=1)
  np.testing.assert_array_equal(scoring.average_ranks(x), want)
  # float32 rows rank as their float64 values; -0.0 ties with 0.0.
  np.testing.assert_array_equal(scoring.average_ranks(x.astype(np.float32)),
                                stats.rankdata(x.astype(np.float32), axis=1))
  np.testing.assert_array_equal(
      scoring.average_ranks(np.array([[0.0, -0.0, 1.0]])), [[1.5, 1.5, 3.0]])
  # By hand: 2 and 2 share ranks 2 and 3.
  np.testing.assert_array_equal(
      scoring.average_ranks(np.array([[5.0, 2.0, 2.0, 1.0]])),
      [[4.0, 2.5, 2.5, 1.0]])


def test_spearman_is_spearmanr_and_nan_for_a_constant_row():
  a, b = _tied_rows(1), _tied_rows(2)
  got = scoring.spearman(a, b)
  assert np.isnan(got[1])  # a[1] (and b[1]) is constant.
  for i in (0, 2, 3, 4, 5):
    assert got[i] == pytest.approx(stats.spearmanr(a[i], b[i])[0], abs=1e-12)
  with pytest.raises(ValueError, match="differ in shape"):
    scoring.spearman(a, b[:, :-1])


def test_histogram_counts_and_entropy_are_numpys_and_scipys():
  x = _tied_rows(3, n=8, d=500)
  x[4] = np.linspace(-1, 1, 500)  # Entries on the bin edges themselves.
  x[5, :3] = [1e-30, -1e-30, 5.0]
  for n_bins in (2, 7, 100):
    want = np.stack([np.histogram(r, bins=n_bins)[0] for r in x])
    np.testing.assert_array_equal(scoring.histogram_counts(x, n_bins), want)
    h = np.array([stats.entropy(c) for c in want])
    np.testing.assert_allclose(scoring.histogram_entropy(x, n_bins), h,
                               rtol=0, atol=1e-15)
  # The constant row: one bin holds everything, entropy 0.
  assert scoring.histogram_entropy(x, 100)[1] == 0.0
  # float32 maps bin by their exact float64 values, as np.histogram does.
  x32 = x.astype(np.float32)
  want = np.stack([np.histogram(r.astype(np.float64), bins=100)[0]
                   for r in x32])
  np.testing.assert_array_equal(scoring.histogram_counts(x32, 100), want)


def test_ssim_is_skimages_one_dimensional_ssim():
  a, b = _tied_rows(4, d=40), _tied_rows(5, d=40)
  b[0] = a[0]
  for win in (3, 7):
    ranges = np.maximum(a.max(1), b.max(1)) - np.minimum(a.min(1), b.min(1))
    with np.errstate(invalid="ignore"):
      want = [skmetrics.structural_similarity(p, q, win_size=win,
                                              data_range=float(r))
              for p, q, r in zip(a, b, ranges)]
    with np.errstate(invalid="ignore"):  # Row 1: constant, range 0: NaN.
      got = scoring.ssim(a, b, win_size=win, data_range=ranges)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-14)
    assert np.isnan(got[1])
    assert got[0] == pytest.approx(1.0)
  with pytest.raises(ValueError, match="win_size"):
    scoring.ssim(a[:, :5], b[:, :5], win_size=7, data_range=1.0)


def test_repaired_scores_equal_the_per_image_functions():
  rng = np.random.default_rng(6)
  m = rng.standard_normal((4, 6, 6, 3)).astype(np.float32)
  m[:, :2] = 0.0
  r = rng.standard_normal((4, 6, 6, 3)).astype(np.float32)
  flat = lambda v: np.transpose(v, (0, 3, 1, 2)).reshape(len(v), -1)
  want = [stats.entropy(np.histogram(v.astype(np.float64), bins=100)[0])
          for v in flat(m)]
  np.testing.assert_allclose(repaired.discrete_entropy(m), want, rtol=0,
                             atol=1e-15)
  ssim = repaired.ssim_flat(m, r)
  for i, (p, q) in enumerate(zip(flat(m).astype(np.float64),
                                 flat(r).astype(np.float64))):
    p, q = p / np.abs(p).max(), q / np.abs(q).max()
    both = np.concatenate([p, q])
    assert ssim[i] == pytest.approx(skmetrics.structural_similarity(
        p, q, win_size=7, data_range=float(both.max() - both.min())),
                                    abs=1e-14)


def test_flat_spearman_keeps_a_references_ranks():
  rng = np.random.default_rng(7)
  ref = rng.standard_normal((3, 4, 4, 2))
  ref[:, 0] = 0.0
  other = rng.standard_normal((3, 4, 4, 2))
  score = repaired.FlatSpearman()
  for maps in (other, ref, -other):
    np.testing.assert_allclose(score(ref, maps),
                               repaired.spearman_flat(ref, maps), rtol=0,
                               atol=1e-15)
  assert len(score._ranks) == 1  # pylint: disable=protected-access
  # A new array with the reference's id would not be taken for it: a
  # different reference object gets its own ranks.
  copy = ref[::-1].copy()
  np.testing.assert_allclose(score(copy, other),
                             repaired.spearman_flat(copy, other), rtol=0,
                             atol=1e-15)
  signed = repaired.FlatSpearman(take_abs=False)
  np.testing.assert_allclose(signed(ref, -ref), -1.0)
  with pytest.raises(ValueError, match="differ in size"):
    score(ref, other[:, :2])


def test_explainer_gives_explains_maps(fast_compiles):
  del fast_compiles
  config = config_lib.load("cifar10")
  config.seed = 0
  config.sanity = ml_collections.ConfigDict({"target": "label"})
  module = models.SmallCNN(3, width=2)
  rng = np.random.default_rng(8)
  images = {"image": rng.standard_normal((4, 8, 8, 3)).astype(np.float32),
            "label": np.array([0, 1, 2, 1], np.int32),
            "index": np.arange(4)}
  # Weights drawn by NumPy: module.init run op by op under fast_compiles
  # would leave unoptimized executables of its random draws in JAX's cache
  # for later tests that compare op-by-op and jitted initializations.
  shapes = jax.eval_shape(module.init, jax.random.key(0),
                          images["image"][:1])
  variables = jax.tree.map(
      lambda s: (0.5 * rng.standard_normal(s.shape)).astype(np.float32),
      shapes)
  want = sanity_maps.explain(config, module, variables, images,
                             ("gradient",))
  fn = sanity_maps.explainer(config, module, variables, images,
                             ("gradient",))
  np.testing.assert_array_equal(fn(images["image"])["gradient"],
                                want["gradient"])
  noisy = images["image"] + 0.5
  np.testing.assert_array_equal(
      fn(noisy)["gradient"],
      sanity_maps.explain(config, module, variables,
                          {**images, "image": noisy},
                          ("gradient",))["gradient"])
