"""`roar_jax.load(workdir)`: a finished run, for notebooks and scripts.

  run = roar_jax.load("/tmp/roar_toy")
  images, labels = run.test_images(8)
  maps = saliency.explain(run.model, images, method="gradient")
  saliency.plot_grid(images, {"gradient": maps})

The run's config comes from `W/config.json` (what the run recorded), the model
is the base model whose metrics were reported (`training.load_state` checks
its step and checksum), and the images are the test split as the model sees
them (preprocessed and normalized).

`roar_jax.run_roar(config, workdir, maps=PATH)` is `--mode=roar` from Python,
on saliency maps computed elsewhere when `maps` names their folder
(`benchmark/roar/external_maps.py` gives the layout).
"""

import copy
import dataclasses
import functools
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from roar_jax import workdir as workdir_lib


@dataclasses.dataclass
class Run:
  """A workdir's config, base model and data.

  Attributes:
    workdir: the run's Workdir.
    config: the config the run recorded.
    model: the base model as a `saliency.Model` (logits, guided_logits,
      features/head, deeplift parts), declaring the data's normalization
      (`config.data.mean`/`std`), so integrated gradients and the
      perturbation methods start from the black image by default.
    module: the flax module of the base model.
    variables: its trained variables.
    source: the dataset's Source.
  """
  workdir: workdir_lib.Workdir
  config: ml_collections.ConfigDict
  model: Any
  module: Any
  variables: Any
  source: Any

  def test_images(self, n: int, *, start: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` test images (from `start`) in the model's input space.

    Returns:
      (images float32 [n, H, W, C] normalized, labels int32 [n]).
    """
    from roar_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    images, labels, need = [], [], start + n
    for batch in pipeline.eval_iterator(self.source, self.config.data, "test",
                                        global_batch_size=min(need, 256)):
      real = batch["mask"] > 0
      images.append(batch["image"][real])
      labels.append(batch["label"][real])
      if sum(len(x) for x in labels) >= need:
        break
    images, labels = np.concatenate(images), np.concatenate(labels)
    if len(labels) < need:
      raise ValueError(f"test_images: the test split has {len(labels)} "
                       f"images, fewer than start + n = {need}")
    return images[start:need], labels[start:need]

  @functools.cached_property
  def class_names(self) -> tuple[str, ...] | None:
    return self.source.info.class_names


def load_config(workdir) -> ml_collections.ConfigDict:
  """The config a run recorded in `W/config.json`."""
  wd = workdir_lib.as_workdir(workdir)
  stored = workdir_lib.read_json(wd.config_file, missing_ok=True)
  if stored is None:
    raise workdir_lib.WorkdirError(
        f"{wd.config_file} not found: {wd} holds no run (run roar_jax.main "
        "with this --workdir first)")
  return ml_collections.ConfigDict(stored["config"])


def check_base_finished(config, wd: workdir_lib.Workdir, *,
                        allow_unfinished: bool = False):
  """Refuses (or, if `allow_unfinished`, warns about) a base model whose
  training did not finish: its metrics.json, written last, is missing or
  records fewer steps than `config.train.num_steps`.

  Raises:
    workdir.WorkdirError: naming the folder and the step training reached.
  """
  metrics = workdir_lib.read_json(
      workdir_lib.join(wd.base, workdir_lib.METRICS_FILE), missing_ok=True)
  goal = config.train.num_steps
  if metrics is not None and metrics.get("steps") == goal:
    return
  if metrics is not None:
    reached = metrics.get("steps")
  else:
    steps = [int(n) for n in workdir_lib.listdir(
        workdir_lib.join(wd.base, "checkpoints")) if n.isdigit()]
    reached = max(steps, default=0)
  text = (f"{wd.base}: the base model's training did not finish (step "
          f"{reached} of {goal}); rerun --mode=train with --workdir={wd} to "
          "finish it")
  if not allow_unfinished:
    raise workdir_lib.WorkdirError(
        text + ", or load(..., allow_unfinished=True) for the model as it is")
  logging.warning("%s; loading it as it is", text)


def load(workdir, *, allow_unfinished: bool = False) -> Run:
  """The run in `workdir`: its config, base model and data.

  Args:
    workdir: a workdir where `--mode=train` (or any later stage) ran.
    allow_unfinished: load a base model whose training was interrupted (the
      newest checkpoint), with a warning naming its step, instead of
      refusing it.

  Returns:
    The Run.

  Raises:
    workdir.WorkdirError: no run there, its base model did not finish
      training (unless `allow_unfinished`), or it cannot be restored.
    ValueError: its model is not registered in this process (one registered
      in the run's config file: load that file first).
  """
  # pylint: disable=g-import-not-at-top
  from roar_jax import models
  from roar_jax import training
  from roar_jax.benchmark.roar import explain
  from roar_jax.data import sources
  # pylint: enable=g-import-not-at-top
  wd = workdir_lib.as_workdir(workdir)
  config = load_config(wd)
  # Before the dataset is opened: a model of one's own is known only once
  # the file that registers it has run in this process.
  if config.model.name not in models.MODELS:
    raise ValueError(
        f"{wd}: the run's model config.model.name={config.model.name!r} is "
        "not a known model in this process; a model registered in the run's "
        "config file is known once that file is loaded: first `from "
        "roar_jax import config; config.load('path/to/the_config.py')` (or "
        "import the module that registers the model), then "
        f"roar_jax.load({str(wd)!r})")
  check_base_finished(config, wd, allow_unfinished=allow_unfinished)
  source = sources.get_source(config.data)
  module, variables = training.load_model(config, wd.base, source=source)
  return Run(wd, config, explain.explainable(config, module, variables),
             module, variables, source)


def run_roar(config, workdir, *, maps: str | None = None,
             maps_replace: bool = False, recompute: bool = False
             ) -> dict[str, Any]:
  """`--mode=roar` from Python: the base model, the rank store, the grid,
  the metrics and the report, resumable as on the command line.

  Args:
    config: the experiment config (e.g. `roar_jax.config.load('toy')`).
    workdir: the experiment workdir.
    maps: a folder of saliency maps computed elsewhere (Captum, Zennit,
      shap, ...), one `<method>/<split>.npy` per method named in
      `config.explain.estimators` (`config.explain.maps`); None keeps the
      config's.
    maps_replace: whether a folder named like a built-in method
      (`gradient`) replaces it (`config.explain.maps_replace`).
    recompute: move artifacts of another config aside instead of stopping.

  Returns:
    {'base': base metrics, 'report': report summary, 'units': number run}.
  """
  # pylint: disable-next=g-import-not-at-top
  from roar_jax import main  # Deferred, as `load`'s: JAX and TF load here.
  if maps is not None:
    config = copy.deepcopy(config)
    with config.unlocked():
      config.explain.maps = str(maps)
      config.explain.maps_replace = bool(maps_replace)
  return main.run(config, str(workdir), "roar", recompute=recompute)
