"""`get_source(config.data)`: the Source of every dataset the configs name.

- 'toy': the synthetic toy images, generated in memory (`synthetic.py`).
- any name with `config.data.path`: the local input (an ImageFolder directory
  or .tar.gz, or a directory of IDX files) is prepared once by the offline
  builders of `builders.py` into `config.data.data_dir`, then read from there.
- 'cifar10', 'fashion_mnist', 'imagenet2012', 'food101' without a path: the
  TFDS builder of that name (`imagenet2012` reads its tar files from
  `config.data.manual_dir`). ImageNet's and Food-101's 'validation' split
  serves as our 'test' split.
- 'birdsnap' without a path: the Birdsnap builder of `birdsnap.py`, which reads
  the downloaded images from `config.data.manual_dir`.

Every Source reads in a fixed order (`shuffle_files=False`, one file at a
time), each process its contiguous even slice, with `index` = the example's
global position in its split. `config.data.num_train` / `num_test` keep only
the first N examples of a split.
"""

import os
from typing import Any, Mapping

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from roar_jax.data import builders
from roar_jax.data import source as source_lib
from roar_jax.data import synthetic

KNOWN_DATASETS = ("toy", "cifar10", "fashion_mnist", "imagenet2012", "food101",
                  "birdsnap")

# Our split names -> the TFDS split each dataset evaluates on.
TFDS_SPLITS = {
    "cifar10": {"train": "train", "test": "test"},
    "fashion_mnist": {"train": "train", "test": "test"},
    "imagenet2012": {"train": "train", "test": "validation"},
    "food101": {"train": "train", "test": "validation"},
}
# Datasets whose TFDS builder reads manually downloaded files.
MANUAL_DIR_DATASETS = ("imagenet2012",)
# For a dataset directory without a 'test' split, the split that stands in.
_TEST_STAND_INS = ("test", "validation", "val")


def _default_split_map(splits) -> dict[str, str]:
  out = {s: s for s in splits}
  for candidate in _TEST_STAND_INS:
    if candidate in splits:
      out.setdefault("test", candidate)
      break
  return out


def _check_cap(value, field: str) -> int | None:
  if value is None:
    return None
  if not isinstance(value, (int, np.integer)) or value <= 0:
    raise ValueError(f"config.data.{field}={value!r} must be a positive int "
                     "or None")
  return int(value)


def _caps(data_config: Mapping[str, Any]) -> dict[str, int | None]:
  return {"train": _check_cap(data_config.get("num_train"), "num_train"),
          "test": _check_cap(data_config.get("num_test"), "num_test")}


class TfdsSource:
  """A Source over a TFDS builder: ordered reads, process slices, caps."""

  def __init__(self, builder: tfds.core.DatasetBuilder, *, name: str,
               split_map: Mapping[str, str] | None = None,
               caps: Mapping[str, int | None] | None = None):
    """Builds the source.

    Args:
      builder: a prepared TFDS builder whose features hold 'image' and a
        ClassLabel 'label' (and optionally 'index').
      name: the dataset's name for logs and reports.
      split_map: our split name -> the builder's split name; default: every
        builder split under its own name, with 'validation' (or 'val')
        standing in for a missing 'test'.
      caps: our split name -> keep only the first N examples (None: all).
    """
    self._builder = builder
    tfds_info = builder.info
    available = list(tfds_info.splits.keys())
    self._split_map = dict(split_map or _default_split_map(available))
    for ours, theirs in self._split_map.items():
      if theirs not in available:
        raise ValueError(f"dataset {name!r} at {builder.data_dir} has no "
                         f"split {theirs!r} (for {ours!r}); it has "
                         f"{sorted(available)}")
    features = tfds_info.features
    for key in ("image", "label"):
      if key not in features:
        raise ValueError(f"dataset {name!r} at {builder.data_dir} has no "
                         f"{key!r} feature; it has {sorted(features)}")
    label = features["label"]
    if not isinstance(label, tfds.features.ClassLabel):
      raise ValueError(f"dataset {name!r} at {builder.data_dir}: 'label' "
                       f"must be a ClassLabel, got {type(label).__name__}")
    num_examples = {}
    caps = caps or {}
    for ours, theirs in self._split_map.items():
      n = tfds_info.splits[theirs].num_examples
      cap = caps.get(ours)
      num_examples[ours] = n if cap is None else min(n, cap)
    self._has_index = "index" in features
    self.info = source_lib.DatasetInfo(
        name=name, num_classes=label.num_classes,
        image_shape=tuple(features["image"].shape),
        num_examples=num_examples, class_names=tuple(label.names))

  @property
  def builder(self) -> tfds.core.DatasetBuilder:
    return self._builder

  @property
  def splits(self) -> tuple[str, ...]:
    return tuple(self._split_map)

  def load(self, split: str, *, process_index: int = 0,
           process_count: int = 1) -> tf.data.Dataset:
    """This process's slice of `split`, in stored order, with global indices.

    `index` is the stored 'index' feature where the dataset has one (the
    offline builders and the ROAR writer store it), else the position in the
    split.
    """
    if split not in self._split_map:
      raise ValueError(f"unknown split {split!r}; dataset {self.info.name!r} "
                       f"has {sorted(self._split_map)}")
    theirs = self._split_map[split]
    n = self.info.num_examples[split]
    start, stop = source_lib.process_slice(n, process_index, process_count)
    # Interleaving several files would change the order; one file at a time
    # keeps the stored order, which `index` relies on.
    read_config = tfds.ReadConfig(interleave_cycle_length=1,
                                  interleave_block_length=None)
    # More processes than examples leave a slice empty; TFDS refuses empty
    # slices, so read one example and take none of it.
    empty = stop == start
    ds = self._builder.as_dataset(
        split=f"{theirs}[0:1]" if empty else f"{theirs}[{start}:{stop}]",
        shuffle_files=False, read_config=read_config)
    if empty:
      ds = ds.take(0)
    has_index = self._has_index

    def select(position, ex):
      index = ex["index"] if has_index else position + start
      return {"image": ex["image"], "label": tf.cast(ex["label"], tf.int64),
              "index": tf.cast(index, tf.int64)}

    return ds.enumerate().map(select)


class DirectorySource(TfdsSource):
  """A Source over a prepared TFDS dataset directory (builder_from_directory).

  Used for the offline builders' output and for the degraded datasets the ROAR
  writer produces.
  """

  def __init__(self, path: str, *, name: str | None = None,
               split_map: Mapping[str, str] | None = None,
               caps: Mapping[str, int | None] | None = None):
    """Builds the source.

    Args:
      path: the dataset's versioned directory (holding dataset_info.json).
      name: the dataset's name; default the builder's name.
      split_map: as in `TfdsSource`.
      caps: as in `TfdsSource`.
    """
    path = os.path.expanduser(os.fspath(path))
    if not os.path.exists(os.path.join(path, "dataset_info.json")):
      raise ValueError(f"{path} is not a prepared TFDS dataset directory "
                       "(no dataset_info.json)")
    builder = tfds.builder_from_directory(path)
    super().__init__(builder, name=name or builder.name, split_map=split_map,
                     caps=caps)


def _capped_array_source(src: source_lib.ArraySource,
                         caps: Mapping[str, int | None]
                         ) -> source_lib.ArraySource:
  splits = {}
  for split in src.splits:
    images, labels = src.arrays(split)
    cap = caps.get(split)
    splits[split] = (images[:cap], labels[:cap])
  info = source_lib.DatasetInfo(
      name=src.info.name, num_classes=src.info.num_classes,
      image_shape=src.info.image_shape,
      num_examples={k: len(v[0]) for k, v in splits.items()},
      class_names=src.info.class_names)
  return source_lib.ArraySource(info, splits)


def prepare(data_config: Mapping[str, Any]) -> str:
  """Prepares `config.data.path` with the offline builders (once).

  Args:
    data_config: `config.data` with `path` set.

  Returns:
    The prepared TFDS directory (for `DirectorySource`).
  """
  path = data_config.get("path")
  full = os.path.expanduser(path)
  if not os.path.exists(full):
    raise ValueError(f"config.data.path: {path} does not exist")
  data_dir = data_config.get("data_dir")
  name = data_config.get("name")
  if builders.is_idx_dir(full):
    class_names = {"fashion_mnist": builders.FASHION_MNIST_CLASSES,
                   "mnist": builders.MNIST_CLASSES}.get(name, ())
    return builders.prepare_idx(full, data_dir, class_names=class_names)
  if os.path.isdir(full) or full.lower().endswith(builders.TAR_SUFFIXES):
    return builders.prepare_image_folder(full, data_dir)
  raise ValueError(f"config.data.path: {path} is neither a directory (an "
                   "ImageFolder or IDX files) nor a .tar/.tar.gz archive")


def get_source(data_config: Mapping[str, Any]):
  """The Source that `config.data` describes.

  Args:
    data_config: `config.data` (name, path, data_dir, manual_dir, num_train,
      num_test, toy).

  Returns:
    A Source with 'train' and 'test' splits.

  Raises:
    ValueError: naming `config.data.name`, `config.data.path` or the field
      that is wrong.
  """
  name = data_config.get("name")
  if name not in KNOWN_DATASETS:
    raise ValueError(f"config.data.name={name!r} is not a known dataset; "
                     f"known: {sorted(KNOWN_DATASETS)}")
  caps = _caps(data_config)
  if name == "toy":
    return _capped_array_source(synthetic.toy_source(data_config.get("toy")),
                                caps)
  path = data_config.get("path")
  if path:
    src = DirectorySource(prepare(data_config), name=name, caps=caps)
    missing = [s for s in ("train", "test") if s not in src.splits]
    if missing:
      raise ValueError(f"config.data.path: {path} has no {missing[0]!r} split"
                       f" (found {sorted(src.builder.info.splits)}); expected "
                       "train/ and test/ (or validation/) folders")
    return src
  return _tfds_source(name, data_config, caps)


def _tfds_source(name: str, data_config: Mapping[str, Any],
                 caps: Mapping[str, int | None]) -> TfdsSource:
  """The TFDS catalog builder of `name`, prepared if needed."""
  data_dir = data_config.get("data_dir")
  data_dir = os.path.expanduser(data_dir) if data_dir else None
  manual_dir = data_config.get("manual_dir")
  if name == "birdsnap":
    # Not in the TFDS catalog: its own builder reads the images that the
    # dataset's download script left in manual_dir. Imported here because it
    # coordinates JAX processes (it imports jax).
    from roar_jax.data import birdsnap  # pylint: disable=g-import-not-at-top
    builder = birdsnap.birdsnap_source_builder(
        os.path.expanduser(manual_dir) if manual_dir else None, data_dir)
    return TfdsSource(builder, name=name,
                      split_map={"train": "train", "test": "test"}, caps=caps)
  if name not in TFDS_SPLITS:
    raise ValueError(
        f"config.data.name={name!r} has no TFDS builder: set config.data.path "
        "to its images in ImageFolder layout (train/<class>/*.jpg, "
        "test/<class>/*.jpg)")
  if name in MANUAL_DIR_DATASETS and manual_dir is None:
    builder = tfds.builder(name, data_dir=data_dir)
    if not os.path.exists(os.path.join(os.fspath(builder.data_dir),
                                       "dataset_info.json")):
      raise ValueError(
          f"config.data.name={name!r} needs config.data.manual_dir (the "
          f"directory holding its downloaded archives) to prepare it in "
          f"{builder.data_dir}")
  else:
    builder = tfds.builder(name, data_dir=data_dir)
  try:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=os.path.expanduser(manual_dir) if manual_dir else None))
  except Exception as e:  # Download and preparation raise many types.
    raise RuntimeError(
        f"could not prepare TFDS dataset {name!r} in {builder.data_dir}: {e}."
        " Without network access, point config.data.path at a local copy "
        "(ImageFolder directory or .tar.gz, or IDX files)") from e
  return TfdsSource(builder, name=name, split_map=TFDS_SPLITS[name], caps=caps)
