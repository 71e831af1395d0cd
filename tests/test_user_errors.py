"""Errors a new user meets: one line, with the closest name and the remedy.

Misspelled estimators, modes and config names; `--config=toy` from another
directory; a dataset without test/ refused before it is prepared; a run whose
model its config file registered; GradCAM on a model without a
features/head split; and the README's own estimator and config.
"""

import io
import json
import os
import re
import subprocess
import sys
import tarfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest

from conftest import FIXTURES, REPO, data_config, load_config
import roar_jax
from roar_jax import main
from roar_jax import saliency
from roar_jax.benchmark.roar import estimator_names
from roar_jax.config import defaults
from roar_jax.config import validation
from roar_jax.data import sources
from roar_jax.data.errors import DataError
from roar_jax.models import small_cnn
from roar_jax.saliency import registry

_LISTING = estimator_names.LISTING


def _refusal(estimators) -> str:
  config = load_config("toy")
  with config.unlocked():
    config.explain.estimators = estimators
  with pytest.raises(validation.ConfigError) as e:
    validation.validate(config, "roar")
  return str(e.value)


# ------------------------------------------------------- names: did you mean


def test_a_misspelled_estimator_gets_the_closest_name_in_one_line():
  assert _refusal(("gradiant", "random")) == (
      "config.explain.estimators: unknown estimator 'gradiant'; did you mean "
      f"'gradient'? ({_LISTING})")
  # The prefixes of a grid's names are part of what is matched.
  assert "did you mean 'blur.sq.gradient'?" in _refusal(
      ("gradient", "blur.sq.gradiant"))
  assert "did you mean 'random_smooth.gradient'?" in _refusal(
      ("gradient", "random_smoth.gradient"))
  # Nothing close: no guess, only where the names are listed.
  assert _refusal(("gradient", "zzzz")) == (
      f"config.explain.estimators: unknown estimator 'zzzz' ({_LISTING})")


def test_the_saliency_api_suggests_a_method_or_says_why_not():
  model = saliency.Model(logits=lambda x: x.reshape(x.shape[0], -1))
  images = jnp.ones((1, 2, 2, 1))
  with pytest.raises(ValueError) as e:
    saliency.explain(model, images, method="integrated_gradient")
  assert str(e.value) == (
      "unknown saliency method 'integrated_gradient'; did you mean "
      "'integrated_gradients'?; saliency.available_methods() lists them all")
  with pytest.raises(ValueError) as e:
    saliency.explain(model, images, method="sg.gradcam")
  assert str(e.value) == (
      "unknown saliency method 'sg.gradcam': 'gradcam' has no noise "
      "ensembles (it is registered without ensemble=True)")


def test_a_bare_config_name_resolves_to_configs_and_a_typo_is_named():
  toy = os.path.join(defaults.CONFIGS_DIR, "toy.py")
  argv = ["main", "--config=toy", "--mode=roar", "--config", "toy:x",
          "--config=my/own.py"]
  assert main.resolve_config_name(argv) == [
      "main", f"--config={toy}", "--mode=roar", "--config", f"{toy}:x",
      "--config=my/own.py"]
  assert defaults.config_path("configs/toy.py") == "configs/toy.py"
  with pytest.raises(ValueError) as e:
    defaults.config_path("toyy")
  assert str(e.value) == (
      f"no config file 'toyy' here and no config named 'toyy' in "
      f"{defaults.CONFIGS_DIR}; did you mean 'toy'?")


def _cli(*args, cwd):
  return subprocess.run([sys.executable, "-m", "roar_jax.main", *args],
                        capture_output=True, text=True, timeout=120, cwd=cwd)


def test_config_toy_loads_the_package_config_from_any_directory(tmp_path):
  # A unit outside the grid stops at start-up, before any work, naming the
  # grid of the config that was loaded: toy's own, with its `oracle`.
  out = _cli("--config=toy", f"--workdir={tmp_path / 'w'}", "--mode=roar",
             "--config.roar.unit=sobel/roar/0.5/0", cwd=tmp_path)
  grid = list(defaults.load("toy").explain.estimators)
  assert grid == ["gradient", "oracle", "random"]
  assert out.returncode != 0
  assert out.stderr.strip().splitlines()[-1] == (
      "config error: config.roar.unit='sobel/roar/0.5/0': estimator 'sobel' "
      f"is not in the grid (config.explain.estimators={grid})")
  assert not (tmp_path / "w").exists()


def test_a_misspelled_mode_is_named_and_help_lists_every_mode(tmp_path):
  out = _cli("--config=toy", f"--workdir={tmp_path}", "--mode=metric",
             cwd=tmp_path)
  assert out.stderr.strip().splitlines()[-1] == (
      "flag error: --mode=metric is not a mode; did you mean --mode=metrics? "
      "(modes: train, explain, roar, metrics, report, sanity, "
      "finetune_fidelity)")
  text = " ".join(_cli("--help", cwd=tmp_path).stdout.split())
  assert ("<train|explain|roar|metrics|report|sanity|finetune_fidelity>"
          in text)
  for mode, what in main.MODES.items():
    assert f"{mode}: {what}" in text.replace("mask- leakage", "mask-leakage")


# --------------------------------------------------- the dataset's layout


def _tiny_tar(path, splits) -> str:
  """A .tar.gz in the ImageFolder layout: two 8x8 PNGs per class."""
  with tarfile.open(path, "w:gz") as tar:
    for split in splits:
      for cls in ("a", "b"):
        for i in range(2):
          out = io.BytesIO()
          PIL.Image.new("RGB", (8, 8), (40 * i, 90, 0)).save(out, "PNG")
          info = tarfile.TarInfo(f"{split}/{cls}/{i}.png")
          info.size = len(out.getvalue())
          tar.addfile(info, io.BytesIO(out.getvalue()))
  return str(path)


def _prepared(data_dir) -> list[str]:
  return [root for root, _, files in os.walk(data_dir)
          if "dataset_info.json" in files]


@pytest.mark.parametrize("splits,missing,beside", [
    (("train",), "test/ folder (or validation/ or val/)", "train/"),
    (("test",), "train/ folder", "test/")])
def test_a_missing_split_folder_is_refused_before_preparing(
    tmp_path, splits, missing, beside):
  archive = _tiny_tar(tmp_path / "mine.tar.gz", splits)
  data_dir = tmp_path / "tfds"
  with pytest.raises(DataError) as e:
    sources.get_source(data_config(name="mine", path=archive,
                                   data_dir=str(data_dir)))
  split = missing.split("/")[0]
  assert str(e.value) == (
      f"config.data.path: {archive} has no {split!r} split (found "
      f"{list(splits)}): a {missing} is missing beside {beside}; expected "
      "[root/]<split>/<class>/<image> with train/ and test/")
  assert _prepared(data_dir) == []  # Refused before, not after, preparing.


# ----------------------------------------------------------- model hints


def test_load_of_a_run_whose_config_file_registered_its_model(tmp_path):
  config = defaults.base_config().to_dict()
  config["model"]["name"] = "model_of_a_config_file"
  (tmp_path / "config.json").write_text(json.dumps({"config": config}))
  with pytest.raises(ValueError) as e:
    roar_jax.load(tmp_path)
  assert str(e.value) == (
      f"{tmp_path}: the run's model config.model.name="
      "'model_of_a_config_file' is not a known model in this process; a "
      "model registered in the run's config file is known once that file is "
      "loaded: first `from roar_jax import config; "
      "config.load('path/to/the_config.py')` (or import the module that "
      "registers the model), then "
      f"roar_jax.load({str(tmp_path)!r})")


class _FeaturesOnly(small_cnn.SanityMLP):
  """An MLP with half of the split GradCAM needs."""

  def features(self, x, train: bool = False):
    return x


def test_gradcam_names_the_methods_a_module_lacks():
  images = jnp.ones((2, 4, 4, 1))
  for module, lacks in ((small_cnn.SanityMLP(3, hidden=(4,)),
                         "no `features` and no `head` method"),
                        (_FeaturesOnly(3, hidden=(4,)), "no `head` method")):
    variables = module.init(jax.random.key(0), images)
    model = saliency.explainable(module, variables)
    with pytest.raises(ValueError) as e:
      saliency.explain(model, images, method="gradcam")
    name = type(module).__name__
    them = "them" if "features" in lacks else "it"
    assert str(e.value) == (
        "method 'gradcam' needs Model.features (the network up to its last "
        "convolutional block, for GradCAM), which this Model lacks: "
        f"{name} defines {lacks}; saliency.explainable splits a model into "
        "`features(x, train=False)` (up to its last convolutional block, "
        "[B, h, w, F]) and `head(f, train=False)` (from there to the "
        f"logits): add {them} to {name}, or pass features=/head= to "
        "saliency.Model")
  tanh = small_cnn.SanityMLP(3, hidden=(4,), act=nn.tanh)
  model = saliency.explainable(tanh, tanh.init(jax.random.key(0), images))
  with pytest.raises(ValueError, match=r"lacks: SanityMLP\.act is tanh, not "
                     "a ReLU: Guided Backprop is defined for ReLU networks$"):
    saliency.explain(model, images, method="guided_backprop")


# ------------------------------------------------------------ the README


def _readme_config() -> str:
  text = (REPO / "README.md").read_text()
  match = re.search(r"```python\n(# my_experiment\.py\n.*?)```", text,
                    re.DOTALL)
  return match.group(1)


def test_the_readme_config_validates_and_its_estimator_is_not_gradient(
    tmp_path):
  source = _readme_config().replace(
      '"/path/to/folder_or.tar.gz"', repr(str(FIXTURES /
                                              "cifar10-mini.tar.gz")))
  (tmp_path / "my_experiment.py").write_text(source)
  try:
    config = defaults.load(str(tmp_path / "my_experiment.py"))
    validation.validate(config, "roar")
    # It sets the statistics its text asks for, not the defaults.
    assert config.data.mean != defaults.base_config().data.mean
    assert config.data.std != defaults.base_config().data.std
    # Linear logits W x: gradient = W[:, t], the new name (x - x0) W[:, t].
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 3, 3, 1)).astype(np.float32)
    weights = rng.normal(size=(9, 4)).astype(np.float32)
    model = saliency.Model(logits=lambda x: x.reshape(x.shape[0], -1)
                           @ weights)
    target = np.array([1, 3])
    black = np.float32(-2.0)
    maps = saliency.explain(model, images, method="gradient_x_delta",
                            target=target, baseline=black)
    grads = weights[:, target].T.reshape(images.shape)
    np.testing.assert_allclose(maps, grads * (images - black), rtol=1e-6)
    # Under the default transform 'abs', |gradient| would rank as gradient
    # does (the README's old example); this one does not.
    rank = lambda m: np.asarray(saliency.rank(m))
    assert (rank(np.abs(grads)) == rank(grads)).all()
    assert (rank(maps) != rank(grads)).any()
  finally:
    registry.unregister("gradient_x_delta")
