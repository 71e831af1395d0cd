"""Expected Gradients: Captum's GradientShap on the same draws, closed forms.

- Captum: tests/references/expected_gradients.npz holds Captum 0.9's
  GradientShap maps (stdevs=0) of a narrow SmallCNN's torch twin and the
  draws Captum made (tests/references/make_expected_gradients.py records
  them); `from_draws` on those draws gives the same maps.
- `explain` computes `from_draws` on the draws of the images' keys; an
  image's draws and map do not depend on its batch, chunk or sample groups.
- A linear model: the map is w * (x - mean_s x0_s) exactly, and its sum
  tends to f(x) - mean_r f(x0_r).
- The explain stage of a toy ROAR config passes the training images as
  references, as it does to DeepSHAP (`saliency.reads_references`), and
  none to methods that read none.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from conftest import load_config
from roar_jax import models
from roar_jax import saliency
from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import explain as explain_stage
from roar_jax.data import sources
from roar_jax.data import synthetic
from roar_jax.saliency import expected_gradients as eg
from roar_jax.saliency import inputs as inputs_lib

pytestmark = pytest.mark.usefixtures("fast_compiles")

REFERENCE = os.path.join(os.path.dirname(__file__), "references",
                         "expected_gradients.npz")
KEY = jax.random.key(11)


@pytest.fixture(scope="module")
def captum():
  """(model, arrays of the .npz): the SmallCNN with the stored weights."""
  data = dict(np.load(REFERENCE))
  params = traverse_util.unflatten_dict(
      {k[len("params/"):]: v for k, v in data.items()
       if k.startswith("params/")}, sep="/")
  width, classes = params["logits"]["kernel"].shape
  module = models.SmallCNN(classes, width=width // 4)
  return saliency.explainable(module, {"params": params}), data


def _inputs(model, images, targets, keys=None, **options):
  """An `Inputs` batch as `explain` builds it (no jit, no lowering)."""
  keys = jax.random.split(KEY, len(images)) if keys is None else keys
  return inputs_lib.Inputs(model, jnp.asarray(images), jnp.asarray(targets),
                           keys, saliency.Options(**options), 0.0)


def _image_keys(key, indices):
  """Image i's key, as `explain` derives it: fold_in(key, indices[i])."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(indices))


@pytest.mark.parametrize("per_step", [None, 9])
def test_equals_captum_gradient_shap_on_its_draws(captum, per_step):
  model, d = captum
  # 9 evaluations per step: groups of 3 of the 8 samples, the last padded.
  inputs = _inputs(model, d["images"], d["targets"],
                   evaluations_per_step=per_step)
  ours = np.asarray(eg.from_draws(inputs, jnp.asarray(d["references"]),
                                  jnp.asarray(d["ref_ids"]),
                                  jnp.asarray(d["alphas"])))
  scale = np.abs(d["maps"]).max()
  assert scale > 1e-3
  # Measured: 1.5e-7 of the largest value (float32 on both sides).
  assert np.abs(ours - d["maps"]).max() / scale <= 1e-4
  np.testing.assert_allclose(ours, d["maps"], rtol=1e-4, atol=1e-4 * scale)


def _explain(model, d, rows, **options):
  """Expected Gradients of images `rows` of the .npz, 8 samples each."""
  return np.asarray(saliency.explain(
      model, d["images"][rows], method="expected_gradients", key=KEY,
      target=d["targets"][rows], indices=np.asarray(rows, np.int32),
      references=d["references"], eg_samples=8, **options))


@pytest.fixture(scope="module")
def explained(captum):
  model, d = captum
  return _explain(model, d, [0, 1, 2])


def test_explain_computes_the_draws_of_its_keys(captum, explained):
  model, d = captum
  x, refs, t = d["images"], d["references"], d["targets"]
  keys = _image_keys(KEY, np.arange(len(x)))
  ids, alphas = eg.draws(jax.vmap(lambda k: jax.random.fold_in(
      k, eg.EG_STREAM))(keys), 8, len(refs))
  expected = eg.from_draws(_inputs(model, x, t), jnp.asarray(refs), ids,
                           alphas)
  np.testing.assert_allclose(explained, expected, rtol=1e-4,
                             atol=1e-5 * np.abs(expected).max())
  # Its model passes: one gradient per sample.
  assert saliency.gradient_passes(model, "expected_gradients", x.shape[1:],
                                  eg_samples=8, references=refs) == 8


def test_draws_depend_on_the_image_key_and_sample_alone():
  draws = jax.jit(eg.draws, static_argnums=(1, 2))
  keys = jax.random.split(KEY, 5)
  ids, alphas = draws(keys, 16, 7)
  # Any batch split, and the first samples of a longer run.
  part_ids, part_alphas = draws(keys[2:4], 10, 7)
  np.testing.assert_array_equal(part_ids, ids[2:4, :10])
  np.testing.assert_array_equal(part_alphas, alphas[2:4, :10])
  assert ids.dtype == jnp.int32 and alphas.dtype == jnp.float32
  # Uniform references and alphas: 4000 draws.
  many_ids, many_alphas = draws(keys[:1], 4000, 4)
  counts = np.bincount(np.asarray(many_ids).ravel(), minlength=4)
  assert counts.min() > 900 and counts.max() < 1100  # 1000 +- 3.7 sd (27).
  assert 0 <= float(many_alphas.min()) and float(many_alphas.max()) < 1
  assert abs(float(many_alphas.mean()) - 0.5) < 0.015  # 3.3 sd (0.0046).


def test_maps_do_not_depend_on_batch_chunks_or_groups(captum, explained):
  model, d = captum
  alone = _explain(model, d, [1, 2])
  chunked = _explain(model, d, [0, 1, 2], chunk_size=1,
                     evaluations_per_step=2)
  scale = np.abs(explained).max()
  np.testing.assert_allclose(alone, explained[1:], rtol=1e-5,
                             atol=1e-6 * scale)
  np.testing.assert_allclose(chunked, explained, rtol=1e-5,
                             atol=1e-6 * scale)


def _linear_problem(rng):
  w = rng.normal(size=(4, 4, 2)).astype(np.float32)
  model = saliency.Model(logits=lambda x: jnp.stack(
      [jnp.sum(x * w, axis=(1, 2, 3)), -jnp.sum(x * w, axis=(1, 2, 3))], -1))
  x = rng.normal(size=(2, 4, 4, 2)).astype(np.float32)
  refs = rng.normal(size=(5, 4, 4, 2)).astype(np.float32)
  return model, w, x, refs


def test_linear_model_closed_form():
  model, w, x, refs = _linear_problem(np.random.default_rng(3))
  t = np.array([0, 1], np.int32)
  sign = np.array([1.0, -1.0], np.float32).reshape(2, 1, 1, 1)
  maps = np.asarray(saliency.explain(model, x, method="expected_gradients",
                                     key=KEY, target=t, references=refs,
                                     eg_samples=64))
  # The gradient is +-w wherever it is taken: the map is w (x - mean_s x0_s)
  # over the references drawn, whatever the alphas.
  keys = jax.vmap(lambda k: jax.random.fold_in(k, eg.EG_STREAM))(
      _image_keys(KEY, np.arange(2)))
  ids, _ = eg.draws(keys, 64, len(refs))
  drawn_mean = refs[np.asarray(ids)].mean(axis=1)  # [N, H, W, C]
  np.testing.assert_allclose(maps, sign * w * (x - drawn_mean), rtol=1e-4,
                             atol=1e-5)


def test_linear_model_is_complete_in_expectation():
  """The sum tends to f(x) - mean_r f(x0_r): the mean over 64 independent
  draws (one image under 64 indices) of 1024 samples each."""
  model, w, x, refs = _linear_problem(np.random.default_rng(4))
  copies, samples = 64, 1024
  maps = saliency.explain(model, np.repeat(x[:1], copies, axis=0),
                          method="expected_gradients", key=KEY,
                          target=np.zeros(copies, np.int32), references=refs,
                          eg_samples=samples, evaluations_per_step=2 ** 16)
  f = lambda a: np.sum(a * w, axis=(-3, -2, -1))
  expected = f(x[0]) - f(refs).mean()
  # The standard error of the mean of copies x samples reference draws.
  error = f(refs).std() / np.sqrt(copies * samples)
  total = float(np.mean(np.sum(np.asarray(maps), axis=(1, 2, 3))))
  assert abs(total - expected) < 4 * error, (total, expected, error)
  assert error < 0.02 * abs(expected)


def test_needs_references_in_one_line(captum):
  model, d = captum
  with pytest.raises(ValueError, match=r"^references: \['expected_gradients'"
                     r"\].*pass references="):
    saliency.explain(model, d["images"], method="expected_gradients", key=KEY)
  assert saliency.reads_references("expected_gradients")
  assert saliency.reads_references("deepshap")
  assert not saliency.reads_references("integrated_gradients")


def _toy_stage(tmp_path, estimators):
  """The explain stage of a small toy config, set up (nothing explained)."""
  config = load_config("toy")
  with config.unlocked():
    config.data.toy.num_train, config.data.toy.num_test = 64, 32
    config.explain.estimators = estimators
    config.explain.num_references = 4
  source = sources.get_source(config.data)
  return config, explain_stage._Stage(  # pylint: disable=protected-access
      config, workdir_lib.Workdir(str(tmp_path)), source, None)


@pytest.mark.parametrize("estimators", [("expected_gradients", "random"),
                                        ("deepshap",)])
def test_explain_stage_passes_training_images_as_references(
    tmp_path, estimators):
  config, stage = _toy_stage(tmp_path, estimators)
  # The first 4 training images, normalized as the model sees them.
  train = synthetic.make_toy_split(config.data.toy, "train")[0][:4]
  mean, std = np.asarray(config.data.mean), np.asarray(config.data.std)
  refs = (np.asarray(train, np.float64) / 255 - mean) / std
  np.testing.assert_allclose(stage.options["references"], refs, rtol=1e-6,
                             atol=1e-6)


def test_explain_stage_passes_no_references_to_others(tmp_path):
  _, stage = _toy_stage(tmp_path, ("gradient", "gradcam_pp", "random"))
  assert "references" not in stage.options
