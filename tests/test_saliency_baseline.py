"""The default baseline: the black image of the declared normalization.

A model that declares how its inputs were normalized (pixel_mean, pixel_std)
gets the black image (0 - mean) / std as the baseline of every method that
reads one; a model that declares nothing must be given `baseline=`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import roar_jax
from conftest import load_config
from roar_jax import saliency
from roar_jax.benchmark.roar import explain

KEY = jax.random.key(0)
MEAN = (0.5, 0.4, 0.3)
STD = (0.25, 0.2, 0.3)
# The methods that read a baseline, with options small enough for a test.
READERS = ("integrated_gradients", "sg.integrated_gradients", "deeplift",
           "occlusion", "rise", "lime", "kernel_shap")
SMALL = dict(num_samples=3, ig_steps=8, rise_masks=32, rise_cells=2,
             lime_samples=24, shap_samples=24, num_segments=4,
             occlusion_window=2)


def _logits(x):
  """A nonlinear two-class model: IG depends on where the path starts."""
  w = jnp.linspace(-1.0, 1.0, x[0].size).reshape(x.shape[1:])
  z = jnp.sum(jnp.tanh(x * w + 0.3), axis=(1, 2, 3))
  return jnp.stack([z, jnp.sum(jnp.square(x), axis=(1, 2, 3)) * 0.05], -1)


def _model(**normalization):
  return saliency.Model(logits=_logits,
                        deeplift_logits=saliency.deeplift_logits(_logits),
                        **normalization)


def _images(n=2):
  return np.asarray(jax.random.normal(jax.random.key(3), (n, 4, 4, 3)),
                    np.float32)


def test_black_image_is_minus_mean_over_std_in_float32():
  black = saliency.black_image(MEAN, STD)
  expected = -np.asarray(MEAN, np.float32) / np.asarray(STD, np.float32)
  assert black.dtype == np.float32 and black.shape == (3,)
  np.testing.assert_array_equal(black, expected)
  # Scalar statistics give one value, broadcast over the channels.
  np.testing.assert_array_equal(saliency.black_image(0.5, 0.25), [-2.0])


@pytest.mark.parametrize("method", READERS)
def test_declared_default_equals_explicit_black(method):
  x, t = _images(), np.array([0, 1], np.int32)
  declared = _model(pixel_mean=MEAN, pixel_std=STD)
  default = saliency.explain(declared, x, method=method, key=KEY, target=t,
                             **SMALL)
  explicit = saliency.explain(declared, x, method=method, key=KEY, target=t,
                              baseline=saliency.black_image(MEAN, STD),
                              **SMALL)
  np.testing.assert_array_equal(np.asarray(default), np.asarray(explicit))


def test_declared_ig_differs_from_input_space_zero():
  x, t = _images(), np.array([0, 0], np.int32)
  declared = _model(pixel_mean=MEAN, pixel_std=STD)
  black = saliency.explain(declared, x, method="integrated_gradients",
                           target=t)
  zero = saliency.explain(declared, x, method="integrated_gradients",
                          target=t, baseline=0.0)
  # Black is about -2 per value here, 0 is the mean colour: the paths differ.
  assert np.abs(np.asarray(black) - np.asarray(zero)).max() > 0.1


def test_declared_ig_is_complete_from_black():
  x, t = _images(), np.array([0, 0], np.int32)
  declared = _model(pixel_mean=MEAN, pixel_std=STD)
  maps = saliency.explain(declared, x, method="integrated_gradients",
                          target=t, ig_steps=2000)
  black = np.broadcast_to(saliency.black_image(MEAN, STD), x.shape)
  delta = np.asarray(_logits(x))[:, 0] - np.asarray(_logits(black))[:, 0]
  total = np.asarray(maps).sum(axis=(1, 2, 3))
  # The right Riemann sum is off by about (g'(1) - g'(0)) / (2 m), g the
  # logit along the path.
  np.testing.assert_allclose(total, delta, rtol=1e-3, atol=5e-3)
  # Far from zero, and far from what a path from 0 would sum to.
  from_zero = np.asarray(_logits(x))[:, 0] - np.asarray(_logits(0 * x))[:, 0]
  assert np.abs(delta).min() > 0.5
  assert np.abs(total - from_zero).min() > 0.5


def test_call_options_declare_the_normalization_too():
  x, t = _images(), np.array([1, 0], np.int32)
  by_call = saliency.explain(_model(), x, method="integrated_gradients",
                             target=t, pixel_mean=MEAN, pixel_std=STD)
  by_model = saliency.explain(_model(pixel_mean=MEAN, pixel_std=STD), x,
                              method="integrated_gradients", target=t)
  np.testing.assert_array_equal(np.asarray(by_call), np.asarray(by_model))
  # The call's statistics win over the model's.
  other = saliency.explain(_model(pixel_mean=(0.0,), pixel_std=(1.0,)), x,
                           method="integrated_gradients", target=t,
                           pixel_mean=MEAN, pixel_std=STD)
  np.testing.assert_array_equal(np.asarray(other), np.asarray(by_model))


@pytest.mark.parametrize("method", READERS)
def test_undeclared_without_baseline_names_baseline(method):
  with pytest.raises(ValueError, match=r"^baseline: .*pass baseline="):
    saliency.explain(_model(), _images(), method=method, key=KEY, **SMALL)


def test_undeclared_methods_without_a_baseline_still_run():
  x = _images()
  refs = _images(3) * 0.5
  methods = ("gradient", "gradient_x_input", "sg.gradient", "random", "sobel",
             "deepshap")
  # None of them reads a baseline: giving one changes nothing.
  plain = saliency.explain_all(_model(), x, methods=methods, key=KEY,
                               references=refs, num_samples=3)
  given = saliency.explain_all(_model(), x, methods=methods, key=KEY,
                               references=refs, num_samples=3, baseline=5.0)
  for m in methods:
    assert np.abs(np.asarray(plain[m])).max() > 0, m
    np.testing.assert_array_equal(np.asarray(plain[m]), np.asarray(given[m]))


def test_bad_declared_std_is_refused():
  with pytest.raises(ValueError, match="pixel_std"):
    _model(pixel_mean=MEAN, pixel_std=(0.2, 0.0, 0.3))


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
  """A toy workdir with a briefly trained base model."""
  from roar_jax import main  # pylint: disable=g-import-not-at-top
  config = load_config("toy")
  with config.unlocked():
    config.train.num_steps = 20
    config.train.checkpoint_every = 20
  workdir = str(tmp_path_factory.mktemp("toy"))
  main.run(config, workdir, "train")
  return config, workdir


def test_loaded_model_declares_its_normalization(toy_run):
  config, workdir = toy_run
  run = roar_jax.load(workdir)
  assert run.model.pixel_mean == tuple(config.data.mean)
  assert run.model.pixel_std == tuple(config.data.std)
  images, _ = run.test_images(2)
  default = saliency.explain(run.model, images, method="integrated_gradients",
                             ig_steps=4)
  # What the explain stage passed before the model declared it: -mean/std
  # per channel in float32 (toy: -2).
  black = -(np.asarray(config.data.mean, np.float32) /
            np.asarray(config.data.std, np.float32))
  np.testing.assert_array_equal(explain.black_image(config), black)
  explicit = saliency.explain(run.model, images,
                              method="integrated_gradients", ig_steps=4,
                              baseline=black)
  np.testing.assert_array_equal(np.asarray(default), np.asarray(explicit))
  zero = saliency.explain(run.model, images, method="integrated_gradients",
                          ig_steps=4, baseline=0.0)
  assert np.abs(np.asarray(default) - np.asarray(zero)).max() > 0


def test_explain_stage_maps_are_those_of_the_explicit_black(toy_run):
  config, workdir = toy_run
  run = roar_jax.load(workdir)
  images, _ = run.test_images(2)
  with config.unlocked():
    config.explain.ig_steps = 4
  options = explain.explain_options(config)
  assert "baseline" not in options  # The stage's model supplies it.
  methods = ("integrated_gradients", "occlusion")
  stage = saliency.explain_all(
      explain.explainable(config, run.module, run.variables), images,
      methods=methods, **options)
  # The stage's former call: an undeclared model given the black image.
  before = saliency.explain_all(
      saliency.explainable(run.module, run.variables), images,
      methods=methods, baseline=explain.black_image(config), **options)
  for m in methods:
    np.testing.assert_array_equal(np.asarray(stage[m]), np.asarray(before[m]))
