"""The smoothness controls: `random_smooth`, `random_smooth.<e>`, `blur.<e>`.

The fill measurements read real CIFAR-10 test images from
../shared/data/cifar10-jpeg.tar.gz (skipped without it).
"""

import io
import os
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from PIL import Image

from conftest import load_config
from roar_jax import levels as levels_lib
from roar_jax import saliency
from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import artifacts, curves, grid
from roar_jax.benchmark.roar import estimator_names as names
from roar_jax.benchmark.roar import matched_controls, metric_options
from roar_jax.benchmark.roar import pipeline as roar
from roar_jax.config import validation
from roar_jax.data import degradation
from roar_jax.data import rank_store as rank_store_lib
from roar_jax.saliency import smoothing

# Any Model: the controls never call it.
NO_MODEL = saliency.Model(logits=lambda x: x.reshape(x.shape[0], -1)[:, :2])


def _noise(n=4, h=12, w=10, c=3, seed=0):
  return np.random.default_rng(seed).random((n, h, w, c), np.float32)


# ------------------------------------------------------------------ the blur


def test_blurred_delta_is_the_sampled_gaussian():
  x = np.zeros((1, 41, 41, 1), np.float32)
  x[0, 20, 20, 0] = 1.0
  out = np.asarray(smoothing.blur(x, 3.0))[0, :, :, 0]
  t = np.arange(-12, 13)  # radius int(4 * 3 + 0.5) = 12
  g = np.exp(-t ** 2 / 18.0)
  g /= g.sum()
  expected = np.zeros((41, 41))
  expected[8:33, 8:33] = np.outer(g, g)
  np.testing.assert_allclose(out, expected, atol=1e-7)
  np.testing.assert_allclose(smoothing.gaussian_kernel(3.0), g, atol=1e-15)


@pytest.mark.parametrize("sigma", [0.6, 3.0, 7.0])
def test_blur_equals_scipy_gaussian_filter_at_the_borders_too(sigma):
  x = _noise()  # 12 x 10: at sigma 7 the kernel reflects more than once.
  expected = scipy.ndimage.gaussian_filter(
      x.astype(np.float64), (0, sigma, sigma, 0), mode="reflect")
  np.testing.assert_allclose(np.asarray(smoothing.blur(x, sigma)), expected,
                             atol=2e-6)
  np.testing.assert_array_equal(np.asarray(smoothing.blur(x, 0)), x)


def test_lag1_autocorrelation_values():
  # Rows 0 1 2 3, twice: centred -1.5 -.5 .5 1.5, variance 1.25; horizontal
  # pairs give (0.75 - 0.25 + 0.75) / 3, vertical pairs 1.25: (1/3 + 1) / 2.
  ramp = np.tile(np.arange(4.0), (1, 2, 1))
  assert smoothing.lag1_autocorrelation(ramp) == pytest.approx(2 / 3)
  # A checkerboard is perfectly anti-correlated.
  board = np.indices((6, 6)).sum(0) % 2
  assert smoothing.lag1_autocorrelation(board[None]) == pytest.approx(-1.0)


# ---------------------------------------------------------- random_smooth


def test_random_smooth_is_random_blurred_fixed_per_image_and_seed():
  x = jnp.zeros((6, 16, 16, 3))
  key = jax.random.key(3)
  maps = saliency.explain_all(NO_MODEL, x, methods=("random", "random_smooth"),
                              key=key, indices=np.arange(6), smooth_sigma=2.0)
  np.testing.assert_allclose(np.asarray(maps["random_smooth"]),
                             np.asarray(smoothing.blur(maps["random"], 2.0)),
                             atol=1e-6)
  # Image 4 alone, in another batch: the same map; another key: another map.
  alone = saliency.explain(NO_MODEL, x[:1], method="random_smooth", key=key,
                           indices=np.array([4]), smooth_sigma=2.0)
  np.testing.assert_array_equal(np.asarray(alone[0]),
                                np.asarray(maps["random_smooth"][4]))
  other = saliency.explain(NO_MODEL, x[:1], method="random_smooth",
                           key=jax.random.key(4), indices=np.array([4]),
                           smooth_sigma=2.0)
  assert not np.allclose(np.asarray(other[0]),
                         np.asarray(maps["random_smooth"][4]))


def test_bad_sigma_is_refused_in_one_line_naming_the_field():
  x = jnp.zeros((1, 8, 8, 3))
  with pytest.raises(ValueError, match="^saliency option smooth_sigma=-1"):
    saliency.explain(NO_MODEL, x, method="random_smooth",
                     key=jax.random.key(0), smooth_sigma=-1)
  with pytest.raises(ValueError, match="^blur_sigma="):
    saliency.rank(x, blur_sigma=float("inf"))
  for bad in (0, -2.0, 1e6):
    config = load_config("toy")
    with config.unlocked():
      config.explain.smooth_sigma = bad
    with pytest.raises(validation.ConfigError) as e:
      validation.validate(config, "roar")
    message = str(e.value)
    assert message.startswith("config.explain.smooth_sigma=")
    assert "\n" not in message


def test_matched_sigma_reproduces_the_target_autocorrelation():
  target = 0.6
  sigma = matched_controls.match_sigma(target, (32, 32))
  # Fresh noise (another draw) ranked as the explain stage ranks it.
  maps = saliency.explain(NO_MODEL, jnp.zeros((64, 32, 32, 3)),
                          method="random_smooth", key=jax.random.key(9),
                          smooth_sigma=sigma)
  got = smoothing.lag1_autocorrelation(np.asarray(saliency.rank(maps)))
  assert got == pytest.approx(target, abs=0.01), sigma
  assert matched_controls.match_sigma(0.0, (32, 32)) == 0.0
  assert matched_controls.match_sigma(0.9999, (32, 32)) == 16.0


def test_blurred_ranking_ranks_the_blurred_scores():
  maps = _noise(seed=1) - 0.5
  levels = np.asarray(saliency.rank(maps, transform="abs", blur_sigma=1.5))
  scores = scipy.ndimage.gaussian_filter(
      np.abs(maps.astype(np.float64)).sum(-1), (0, 1.5, 1.5))
  flat = scores.reshape(len(scores), -1)
  ranks = np.argsort(np.argsort(-flat, axis=1, kind="stable"), axis=1)
  np.testing.assert_array_equal(
      levels, (ranks * 100 // flat.shape[1]).reshape(scores.shape))
  assert (smoothing.lag1_autocorrelation(levels)
          > smoothing.lag1_autocorrelation(saliency.rank(maps)) + 0.5)


# ------------------------------------------------------------------ names


def test_names_parse():
  assert names.parse("blur.sq.gradient") == names.Name(
      "blur.sq.gradient", "gradient", squared=True, blurred=True)
  assert names.parse("blur.sg.gradient").method == "sg.gradient"
  assert names.parse("random_smooth.sg.gradient").matched_to == "sg.gradient"
  assert names.parse("random_smooth").method == "random_smooth"
  assert names.parse("oracle").method is None
  methods = saliency.available_methods()
  grid_names = ("gradient", "random_smooth.gradient", "blur.sq.gradient")
  for name in grid_names + ("blur.random", "sq.gradient"):
    assert names.problem(name, methods, grid_names) is None, name
  for bad in ("blur.blur.gradient", "blur.oracle", "random_smooth.sobel",
              "random_smooth.random_smooth.gradient", "blur.nope"):
    assert names.problem(bad, methods, grid_names) is not None, bad
  config = load_config("toy")
  assert names.transform_for(config.explain, "blur.sq.gradient") == "square"
  with config.unlocked():
    config.explain.transforms = (("gradient", "signed"),)
  assert names.transform_for(config.explain, "blur.gradient") == "signed"
  assert names.blur_sigma(config.explain, "blur.gradient") == 3.0
  assert names.blur_sigma(config.explain, "gradient") == 0.0
  assert names.model_free("blur.sobel")
  assert not names.model_free("blur.gradient")
  assert not names.model_free("random_smooth.sobel")
  assert names.model_free("oracle") and names.model_free("sq.random")
  assert names.segmented("sq.lime") and not names.segmented("gradient")


def test_unknown_or_unmatched_names_are_refused_at_start_up():
  for estimators, phrase in (
      (("gradient", "random_smooth.sobel"), "'sobel', which is not in"),
      (("gradient", "blur.nope"), "unknown estimator 'blur.nope'")):
    config = load_config("toy")
    with config.unlocked():
      config.explain.estimators = estimators
    with pytest.raises(validation.ConfigError, match=phrase):
      validation.validate(config, "roar")


def test_smooth_control_of_an_estimator():
  grid_names = ("random", "random_smooth", "gradient", "sobel",
                "random_smooth.gradient", "blur.gradient")
  assert names.smooth_control("gradient", grid_names) == (
      "random_smooth.gradient")
  assert names.smooth_control("sobel", grid_names) == "random_smooth"
  assert names.smooth_control("blur.gradient", grid_names) == "random_smooth"
  for control in ("random", "random_smooth", "random_smooth.gradient",
                  "oracle"):
    assert names.smooth_control(control, grid_names) is None
  assert names.smooth_control("gradient", ("random", "gradient")) is None


def test_rank_store_fingerprints_hold_sigma_and_the_matched_estimator():
  def plan(sigma, transforms=()):
    config = load_config("toy")
    with config.unlocked():
      config.explain.estimators = ("gradient", "random_smooth",
                                   "random_smooth.gradient", "blur.sobel")
      config.explain.smooth_sigma = sigma
      config.explain.transforms = transforms
    return artifacts.plan(config, workdir_lib.Workdir("/nonexistent"), [])
  a, b = plan(3.0), plan(1.5)
  c = plan(3.0, transforms=(("gradient", "square"),))
  # smooth_sigma is read by random_smooth and blur.<e> only: the matched
  # control's sigma comes from its estimator's maps.
  changed = {e for e in a.ranks
             if a.ranks[e].fingerprint != b.ranks[e].fingerprint}
  assert changed == {"random_smooth", "blur.sobel"}
  assert a.ranks["random_smooth.gradient"].record["inputs"] == {
      "ranks": a.ranks["gradient"].fingerprint}
  assert set(a.ranks["blur.sobel"].record["inputs"]) == {"data"}
  # The matched control follows its estimator's rank store.
  assert (c.ranks["random_smooth.gradient"].fingerprint
          != a.ranks["random_smooth.gradient"].fingerprint)


# ------------------------------------------- real images, no model / a model


@pytest.fixture(scope="module")
def cifar(shared_data):
  """The first 20 test images of each CIFAR-10 class, uint8 [200, 32, 32, 3]."""
  path = os.path.join(shared_data, "cifar10-jpeg.tar.gz")
  if not os.path.exists(path):
    pytest.skip(f"{path} not found")
  images = {}
  with tarfile.open(path) as tar:
    for member in tar:
      if (member.isfile() and member.name.startswith("test/")
          and int(member.name[-8:-4]) < 20):
        data = tar.extractfile(member).read()
        images[member.name] = np.asarray(
            Image.open(io.BytesIO(data)).convert("RGB"))
  return np.stack([images[k] for k in sorted(images)])


def _fill_rmse(images, levels, threshold=0.5):
  """RMSE (0-255) of ROAD's fill over the removed pixels."""
  out = degradation.degrade(images, levels, threshold=threshold, mode="roar",
                            fill="noisy_linear",
                            indices=np.arange(len(images)))
  removed = levels_lib.removal_mask(levels, threshold=threshold, mode="roar")
  diff = out.astype(np.float64) - images
  return float(np.sqrt(np.mean(diff[removed] ** 2)))


def test_noisy_linear_fills_smooth_removals_worse_than_iid(cifar):
  maps = saliency.explain_all(
      NO_MODEL, cifar.astype(np.float32) / 255,
      methods=("random", "random_smooth"), key=jax.random.key(0),
      smooth_sigma=3.0)
  iid = _fill_rmse(cifar, np.asarray(saliency.rank(maps["random"])))
  smooth = _fill_rmse(cifar, np.asarray(saliency.rank(maps["random_smooth"])))
  # Measured on these 200 images: 18.9 and 38.3 (on the whole test split
  # 17.9 and 36.2).
  assert 15 < iid < 23
  assert smooth > 1.7 * iid


def test_blurring_a_map_lowers_its_road_morf_accuracy(cifar):
  """Song, Cha and Seo (2023): under ROAD's fill a blurred map "removes more"
  (lower MoRF accuracy) without carrying more information."""
  w = jnp.asarray(np.random.default_rng(0).normal(
      size=(32 * 32 * 3, 10)).astype(np.float32))
  logits = lambda z: z.reshape(z.shape[0], -1) @ w  # noqa: E731
  x = jnp.asarray((cifar / 255.0 - 0.5) / 0.25, jnp.float32)
  labels = np.asarray(jnp.argmax(logits(x), -1))  # Every image starts right.
  # The gradient of a linear model with iid weights: a map that is not smooth.
  maps = saliency.explain(saliency.Model(logits=logits), x, method="gradient")
  options = metric_options.Options(names=("road_morf",))
  morf = {}
  for sigma in (0.0, 3.0):
    levels = np.asarray(saliency.rank(maps, blur_sigma=sigma))
    c = curves.curves(logits, cifar, labels, levels, np.arange(len(cifar)),
                      options=options, mean=(0.5,), std=(0.25,))
    morf[sigma] = curves.auc(c["road_morf"], curves.road_fractions(
        options.road_thresholds)).mean()
  # Measured: 0.80 unblurred, 0.69 blurred.
  assert morf[3.0] < morf[0.0] - 0.05


# ----------------------------------------------------------- a toy grid


def test_smooth_controls_run_through_a_toy_grid(tmp_path):
  config = load_config("toy")
  with config.unlocked():
    config.explain.estimators = ("gradient", "random_smooth",
                                 "random_smooth.gradient", "blur.gradient")
    config.data.toy.num_train = 400
    config.data.toy.num_test = 200
    config.roar.thresholds = (0.5,)
    config.roar.modes = ("roar",)
    config.roar.num_seeds = 1
    config.train.num_steps = 20
    config.metrics.with_roar = False
  workdir = str(tmp_path)
  roar.run(config, workdir)
  store = rank_store_lib.RankStore(workdir)
  done = {r["estimator"] for _, r in workdir_lib.iter_json(
      workdir_lib.Workdir(workdir).sub("results"))}
  assert done == set(config.explain.estimators)
  record = workdir_lib.read_json(workdir_lib.join(
      store.root, "random_smooth.gradient", matched_controls.RECORD))
  gradient = store.read("gradient", "test")
  assert record["autocorrelation"] == pytest.approx(
      smoothing.lag1_autocorrelation(gradient))
  matched = store.read("random_smooth.gradient", "test")
  assert smoothing.lag1_autocorrelation(matched) == pytest.approx(
      record["autocorrelation"], abs=0.02)
  # Image by image, random_smooth at the matched sigma, as the stage keys it.
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), 7),
                           0)
  again = saliency.explain(NO_MODEL, jnp.zeros((3, 32, 32, 3)),
                           method="random_smooth", key=key,
                           indices=np.array([5, 6, 7]),
                           smooth_sigma=record["sigma"])
  np.testing.assert_array_equal(np.asarray(saliency.rank(again)),
                                matched[5:8])
  assert (smoothing.lag1_autocorrelation(store.read("blur.gradient", "test"))
          > smoothing.lag1_autocorrelation(gradient))
  assert grid.plan_of(config, workdir).ranks["random_smooth"].record[
      "fields"]["explain.smooth_sigma"] == 3.0
