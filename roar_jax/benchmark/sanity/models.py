"""The models the sanity checks compare: trained on true or permuted labels.

- the true-label model (`W/sanity/<model>/true_labels`), trained like any
  training run (resumed from its checkpoints);
- the random-label model of the data randomization test
  (`W/sanity/<model>/random_labels_<N>`): the same architecture trained on
  one fixed permutation of the first N training labels, its steps doubled
  until it fits them (`train_random_labels`).

Both folders carry their provenance (`artifacts.py`), written before the
first training step.
"""

from typing import Any

import numpy as np
from absl import logging

from roar_jax import training
from roar_jax.benchmark.sanity import randomization
from roar_jax.benchmark.sanity import settings
from roar_jax.data import source_protocol as source_lib


def split_arrays(source, split: str) -> tuple[np.ndarray, np.ndarray]:
  """A whole split as uint8 images and int64 labels, in index order."""
  if hasattr(source, "arrays"):
    images, labels = source.arrays(split)
    return np.asarray(images), np.asarray(labels, np.int64)
  images, labels = [], []
  for batch in source.load(split).batch(4096).as_numpy_iterator():
    images.append(batch["image"])
    labels.append(batch["label"])
  return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def num_random_label_images(config, source) -> int:
  """N of the random-label model: `random_labels.num_train` (0: all)."""
  total = int(source.info.num_examples["train"])
  n = int(config.sanity.random_labels.num_train)
  return min(n, total) if n else total


def random_label_source(config, source):
  """The training split with permuted labels, and the untouched test split.

  Args:
    config: the experiment config (`sanity.random_labels.num_train`: use the
      first N training images; 0 for all).
    source: the true-label Source.

  Returns:
    An ArraySource whose 'train' labels are one fixed permutation of the true
    labels (every class count kept) and whose 'test' split is the original.
  """
  rl = config.sanity.random_labels
  images, labels = split_arrays(source, "train")
  if rl.num_train:
    images, labels = images[:rl.num_train], labels[:rl.num_train]
  permuted = randomization.permute_labels(
      labels, [int(config.seed), settings.LABELS_STREAM])
  test = split_arrays(source, "test")
  info = source.info
  new_info = source_lib.DatasetInfo(
      name=f"{info.name}-random-labels", num_classes=info.num_classes,
      image_shape=tuple(info.image_shape),
      num_examples={"train": len(images), "test": len(test[0])},
      class_names=info.class_names)
  return source_lib.ArraySource(new_info, {"train": (images, permuted),
                                           "test": test})


def train_true_labels(config, workdir: str, source, mesh=None
                      ) -> dict[str, Any]:
  """Trains (or reuses) the true-label model of `config.model`.

  The caller has checked the folder's provenance: a finished model found
  here was trained under this config.
  """
  done = training.load_metrics(workdir)
  if done is not None and done.get("steps") == config.train.num_steps:
    return done
  return training.train_and_evaluate(config, workdir, source=source,
                                     mesh=mesh)


def load_trained(config, workdir: str, source, mesh=None):
  """(module, variables) of a trained workdir, restored onto `mesh`."""
  return training.load_model(config, workdir, source=source, mesh=mesh)


def random_label_config(config):
  """The training config of the random-label model (steps set per round)."""
  cfg = settings.model_config(
      config, config.model.name,
      learning_rate=config.sanity.random_labels.get("learning_rate"))
  # Its accuracy on the whole permuted training set, in eval mode, decides
  # whether the labels are fitted (not the running average of train steps).
  cfg.train.eval_train = True
  return cfg


def train_random_labels(config, workdir: str, source, mesh=None
                        ) -> dict[str, Any]:
  """Trains on permuted labels until the training accuracy reaches the floor.

  Starts with `sanity.random_labels.num_steps` and doubles the steps (the
  trainer resumes from its checkpoint) until the accuracy on the whole
  permuted training set, measured in eval mode, reaches
  `sanity.min_train_accuracy` or the steps reach `random_labels.max_steps`.

  Args:
    config: the model's config.
    workdir: the random-label model's training workdir.
    source: the permuted-label Source.
    mesh: the training mesh (default: every device).

  Returns:
    The trainer's metrics of the last run, with 'train_eval_accuracy'.
  """
  sc = config.sanity
  rl = sc.random_labels
  cfg = random_label_config(config)
  steps = int(rl.num_steps)
  done = training.load_metrics(workdir)
  if done is not None and done.get("steps", 0) > steps:
    # An earlier run already doubled: continue from its last round (the
    # trainer cannot go back to fewer steps than its checkpoint holds).
    steps = int(done["steps"])
  while True:
    cfg.train.num_steps = steps
    done = training.load_metrics(workdir)
    if (done is not None and done.get("steps") == steps
        and done.get("train_eval_accuracy") is not None):
      result = done
    else:
      logging.info("random labels: training %s to step %d", workdir, steps)
      result = training.train_and_evaluate(cfg, workdir, source=source,
                                           mesh=mesh)
    acc = result["train_eval_accuracy"]
    logging.info("random labels: training accuracy %.4f after %d steps "
                 "(floor %.2f)", acc, steps, sc.min_train_accuracy)
    if acc >= sc.min_train_accuracy or steps >= rl.max_steps:
      return result
    steps = min(int(rl.max_steps), 2 * steps)
