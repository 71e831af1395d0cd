"""Sanity checks (Adebayo et al. 2018): similarity metrics and randomization.

These tests need no training: the metrics run on hand-made maps, the
randomization on hand-made variables.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from roar_jax.benchmark.sanity import randomization
from roar_jax.benchmark.sanity import similarity

ALL_METRICS = similarity.METRICS + similarity.FOREGROUND_METRICS


def _structured_maps(n, seed=0, size=28):
  """Sparse, blob-shaped signed maps with a zero background, like saliency."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size]
  maps = []
  for _ in range(n):
    cx, cy = rng.uniform(size / 4, 3 * size / 4, 2)
    blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 30.0)
    m = blob * rng.standard_normal((size, size))
    m[blob < 0.1] = 0.0
    maps.append(m)
  return np.stack(maps)[..., None].astype(np.float32)


@pytest.fixture(scope="module")
def maps():
  return _structured_maps(200)


def test_similarity_with_itself_is_one(maps):
  fg = np.abs(maps[..., 0]) > 0
  out = similarity.compare(maps, maps, foreground=fg)
  assert set(out) == set(ALL_METRICS)
  for name, values in out.items():
    # Exact up to float rounding: identical inputs give identical ranks,
    # SSIM windows and HOG descriptors.
    np.testing.assert_allclose(values, 1.0, atol=1e-9, err_msg=name)


def test_similarity_with_an_independent_random_map_is_near_zero(maps):
  fg = np.abs(maps[..., 0]) > 0
  out = similarity.compare(maps, similarity.random_maps(maps.shape, 1),
                           foreground=fg)
  # Tolerances: one 28 x 28 image's rank correlation with noise has a std of
  # about 1/sqrt(784) = 0.036, so the mean over 200 images lies within about
  # +-0.01; 0.02 is a safe bound. SSIM of unrelated maps is a small positive
  # number (flat windows), under 0.02. HOG descriptors are non-negative and
  # block-normalized, so unrelated maps correlate slightly positively: the
  # paper's App. B measures 0.078 for two uniform masks; we bound it by 0.1.
  for name in ("spearman_abs", "spearman_signed", "spearman_abs_fg",
               "spearman_signed_fg"):
    assert abs(similarity.summarize(out[name])["mean"]) < 0.02, name
  assert abs(similarity.summarize(out["ssim"])["mean"]) < 0.02
  assert abs(similarity.summarize(out["hog"])["mean"]) < 0.1
  # And far below a genuinely related pair: the same maps plus small noise.
  noisy = maps + 0.1 * similarity.random_maps(maps.shape, 2) * (maps != 0)
  related = similarity.compare(maps, noisy)
  for name in similarity.METRICS:
    assert similarity.summarize(related[name])["mean"] > 0.5, name


def test_signed_metric_sees_a_sign_flip_that_abs_does_not(maps):
  out = similarity.compare(maps, -maps)
  np.testing.assert_allclose(out["spearman_abs"], 1.0, atol=1e-9)
  np.testing.assert_allclose(out["ssim"], 1.0, atol=1e-9)
  # Zeros stay tied at zero, every other rank is reversed: strongly negative.
  assert similarity.summarize(out["spearman_signed"])["mean"] < -0.3


def test_normalizations_follow_the_paper():
  m = np.zeros((1, 10, 10, 3), np.float32)
  m[0, :, :, 0] = np.arange(100).reshape(10, 10)
  m[0, :, :, 1] = -np.arange(100).reshape(10, 10)  # Cancels in the signed sum.
  a = similarity.normalize_abs(m)
  total = 2 * np.arange(100.0).reshape(10, 10)
  p99 = np.percentile(total, 99)
  np.testing.assert_allclose(a[0], np.clip(total / p99, 0, 1))
  assert a.max() == 1.0 and a.min() == 0.0
  s = similarity.normalize_signed(m)
  np.testing.assert_array_equal(s, 0.0)  # All-zero signed sum: zeros.
  x = np.array([[-4.0, -1.0, 0.0, 2.0]]).reshape(1, 2, 2, 1)
  span = np.percentile([4.0, 1.0, 0.0, 2.0], 99)
  np.testing.assert_allclose(similarity.normalize_signed(x).ravel(),
                             np.clip(np.array([-4, -1, 0, 2]) / span, -1, 1))
  # A map with a single non-zero position: its p99 equals its minimum, so
  # its maximum scales it instead (it is not flattened to all zeros).
  sparse = np.zeros((1, 28, 28, 1))
  sparse[0, 3, 4, 0] = 5.0
  assert similarity.normalize_abs(sparse)[0, 3, 4] == 1.0


def test_constant_maps_give_nan_and_are_not_counted():
  a = _structured_maps(4)
  b = a.copy()
  b[1] = 0.0  # E.g. GradCAM of a randomized model: zero everywhere.
  out = similarity.compare(a, b)
  assert np.isnan(out["spearman_abs"][1])
  assert np.isfinite(out["spearman_abs"][[0, 2, 3]]).all()
  s = similarity.summarize(out["spearman_abs"])
  assert s["n"] == 3 and s["mean"] == pytest.approx(1.0)


def test_spearman_matches_scipy():
  from scipy import stats  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  a = rng.integers(0, 5, (3, 50)).astype(float)  # Many ties.
  b = a + rng.normal(size=(3, 50))
  ours = similarity.spearman(a, b)
  for i in range(3):
    assert ours[i] == pytest.approx(stats.spearmanr(a[i], b[i])[0])
  mask = rng.random((3, 50)) > 0.5
  ours = similarity.spearman(a, b, mask)
  for i in range(3):
    assert ours[i] == pytest.approx(
        stats.spearmanr(a[i, mask[i]], b[i, mask[i]])[0])


def test_hog_correlation_choice_and_bad_options(maps):
  pearson = similarity.compare(maps[:5], maps[5:10])["hog"]
  spear = similarity.compare(
      maps[:5], maps[5:10],
      options=similarity.SimilarityOptions(hog_correlation="spearman"))["hog"]
  assert not np.allclose(pearson, spear)
  with pytest.raises(ValueError, match="hog_correlation"):
    similarity.SimilarityOptions(hog_correlation="kendall")
  with pytest.raises(ValueError, match="ssim_win_size"):
    similarity.SimilarityOptions(ssim_win_size=4)
  with pytest.raises(ValueError, match="unknown fields"):
    similarity.SimilarityOptions.from_config({"window": 3})
  with pytest.raises(ValueError, match="ssim_win_size"):
    similarity.compare(maps[:2, :4, :4], maps[:2, :4, :4])


# ---------------------------------------------------------------------------
# Randomization.


class _TinyNet(nn.Module):
  """conv-BN-dense-dense: small, with BatchNorm statistics to reset or keep."""
  num_classes: int = 3
  act: object = nn.relu

  def setup(self):
    self.conv1 = nn.Conv(4, (3, 3))
    self.bn1 = nn.BatchNorm(use_running_average=True)
    self.fc1 = nn.Dense(8)
    self.logits = nn.Dense(self.num_classes)

  def layer_names(self):
    return ("conv1", "bn1", "fc1", "logits")

  def __call__(self, x, train=False):
    del train
    x = self.act(self.bn1(self.conv1(x)))
    x = self.act(self.fc1(x.reshape(x.shape[0], -1)))
    return self.logits(x)


SHAPE = (6, 6, 2)


@pytest.fixture(scope="module")
def net():
  module = _TinyNet()
  variables = module.init(jax.random.key(0), jnp.zeros((1, *SHAPE)))
  # "Trained" variables: every array moved away from its initial value, so
  # that a re-initialized layer differs in every array (biases included).
  leaves, treedef = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  trained = jax.tree.unflatten(treedef, [
      l + 0.5 + jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])
  return module, trained


def _leaves_equal(a, b):
  return all(np.asarray(x).tobytes() == np.asarray(y).tobytes()
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _all_leaves_differ(a, b):
  return all(not np.array_equal(x, y)
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_cascading_randomizes_the_named_layers_top_down(net):
  module, trained = net
  names = randomization.layer_names(module, trained)
  steps = randomization.cascading_steps(names)
  assert steps == [("logits",), ("logits", "fc1"), ("logits", "fc1", "bn1"),
                   ("logits", "fc1", "bn1", "conv1")]
  key = jax.random.key(7)
  previous = trained
  for k, layers in enumerate(steps):
    out = randomization.randomize(module, trained, layers, key,
                                  input_shape=SHAPE)
    assert set(randomization.changed_layers(trained, out)) == set(layers)
    for layer in names:
      for col in ("params", "batch_stats"):
        if layer not in trained[col]:
          continue
        if layer in layers:
          assert _all_leaves_differ(out[col][layer], trained[col][layer])
        else:  # Untouched: the very same bits.
          assert _leaves_equal(out[col][layer], trained[col][layer])
    # Cumulative: step k adds exactly one layer, the next one down, and keeps
    # the earlier steps' random values (the per-layer seed is fixed).
    added = randomization.changed_layers(previous, out)
    assert added == (names[len(names) - 1 - k],)
    for layer in layers[:-1]:
      assert _leaves_equal(out["params"][layer], previous["params"][layer])
    previous = out
  # The trained variables were not modified in place.
  assert randomization.changed_layers(net[1], trained) == ()


def test_original_init_reruns_the_layers_own_initializers(net):
  module, trained = net
  key = jax.random.key(7)
  out = randomization.randomize(module, trained, ["fc1", "conv1"], key,
                                input_shape=SHAPE)
  names = randomization.layer_names(module, trained)
  for layer in ("fc1", "conv1"):
    expected = module.init(jax.random.fold_in(key, names.index(layer)),
                           jnp.zeros((1, *SHAPE)))["params"][layer]
    assert _leaves_equal(out["params"][layer], expected)
  # Flax's Dense/Conv initializers: zero biases, kernels at init scale.
  np.testing.assert_array_equal(out["params"]["fc1"]["bias"], 0.0)


def test_independent_randomization_changes_one_layer_only(net):
  module, trained = net
  names = randomization.layer_names(module, trained)
  steps = randomization.independent_steps(names)
  assert steps == [(n,) for n in reversed(names)]
  key = jax.random.key(3)
  cascade_last = randomization.randomize(module, trained, names, key,
                                         input_shape=SHAPE)
  for (layer,) in steps:
    out = randomization.randomize(module, trained, [layer], key,
                                  input_shape=SHAPE)
    assert randomization.changed_layers(trained, out) == (layer,)
    # The same layer gets the same random values in both tests.
    assert _leaves_equal(out["params"][layer],
                         cascade_last["params"][layer])


def test_batch_stats_reset_or_kept(net):
  module, trained = net
  key = jax.random.key(0)
  reset = randomization.randomize(module, trained, ["bn1"], key,
                                  input_shape=SHAPE)
  np.testing.assert_array_equal(reset["batch_stats"]["bn1"]["mean"], 0.0)
  np.testing.assert_array_equal(reset["batch_stats"]["bn1"]["var"], 1.0)
  kept = randomization.randomize(module, trained, ["bn1"], key,
                                 input_shape=SHAPE, reset_batch_stats=False)
  assert _leaves_equal(kept["batch_stats"], trained["batch_stats"])
  assert not _leaves_equal(kept["params"]["bn1"], trained["params"]["bn1"])
  assert randomization.has_batch_stats(trained)


def test_truncated_normal_init(net):
  module, trained = net
  out = randomization.randomize(module, trained, ["fc1"], jax.random.key(2),
                                init="truncated_normal", init_std=0.01)
  assert randomization.changed_layers(trained, out) == ("fc1",)
  kernel = np.asarray(out["params"]["fc1"]["kernel"])
  # Truncated at two standard deviations; a 2-sigma-truncated N(0, s^2) has
  # std 0.88 s.
  assert np.abs(kernel).max() <= 0.02 + 1e-7
  assert kernel.std() == pytest.approx(0.0088, rel=0.1)
  assert np.abs(np.asarray(out["params"]["fc1"]["bias"])).max() > 0
  # A BatchNorm layer gets its initializer's scale 1 and offset 0, not
  # draws at std 0.01; its statistics are reset as with 'original'.
  bn = randomization.randomize(module, trained, ["bn1"], jax.random.key(2),
                               init="truncated_normal", init_std=0.01)
  assert randomization.changed_layers(trained, bn) == ("bn1",)
  np.testing.assert_array_equal(bn["params"]["bn1"]["scale"], 1.0)
  np.testing.assert_array_equal(bn["params"]["bn1"]["bias"], 0.0)
  np.testing.assert_array_equal(bn["batch_stats"]["bn1"]["var"], 1.0)


def test_randomize_bad_input_names_the_problem(net):
  module, trained = net
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="unknown layers"):
    randomization.randomize(module, trained, ["fc9"], key, input_shape=SHAPE)
  with pytest.raises(ValueError, match="input_shape"):
    randomization.randomize(module, trained, ["fc1"], key)
  with pytest.raises(ValueError, match="init="):
    randomization.randomize(module, trained, ["fc1"], key, init="uniform")


def test_label_permutation_keeps_every_class_count():
  labels = np.random.default_rng(0).integers(0, 10, 5000)
  permuted = randomization.permute_labels(labels, [0, 1])
  np.testing.assert_array_equal(np.bincount(permuted, minlength=10),
                                np.bincount(labels, minlength=10))
  assert permuted.dtype == labels.dtype
  # A real permutation: most labels move (about 90% of 10 classes), and the
  # same seed gives the same labels.
  assert np.mean(permuted != labels) > 0.8
  np.testing.assert_array_equal(permuted,
                                randomization.permute_labels(labels, [0, 1]))
