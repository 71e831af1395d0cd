"""`get_source(config.data)`: the Source of every dataset the configs name.

- 'toy': the synthetic toy images, generated in memory (`synthetic.py`).
- any name with `config.data.path`: the local input (an ImageFolder directory
  or .tar.gz, or a directory of IDX files) is prepared once by the offline
  builders (`image_folder.py`, `idx.py`) into `config.data.data_dir`, keyed on
  the input's content, then read from there.
- 'cifar10', 'fashion_mnist', 'imagenet2012', 'food101' without a path: the
  TFDS builder of that name (`imagenet2012` reads its tar files from
  `config.data.manual_dir`). ImageNet's and Food-101's 'validation' split
  serves as our 'test' split. A dataset that is not prepared in data_dir and
  would be downloaded fails at once, naming the alternatives, when its
  download host cannot be reached.
- 'birdsnap' without a path: the Birdsnap builder of `birdsnap.py`, which reads
  the downloaded images from `config.data.manual_dir`.

Every Source has a 'train' and a 'test' split and at least 2 classes, or
`get_source` refuses it in one line naming the dataset. `config.data.num_train`
/ `num_test` keep only the first N examples of a split.
"""

import os
import socket
import threading
from typing import Any, Mapping

import numpy as np
from absl import logging
import tensorflow_datasets as tfds

from roar_jax.data import idx
from roar_jax.data import image_folder
from roar_jax.data import names
from roar_jax.data import offline_builder
from roar_jax.data import source_protocol
from roar_jax.data import synthetic
from roar_jax.data.errors import DataError, first_line
from roar_jax.data.tfds_source import DirectorySource, TfdsSource

KNOWN_DATASETS = names.KNOWN_DATASETS

# Our split names -> the TFDS split each dataset evaluates on.
TFDS_SPLITS = {
    "cifar10": {"train": "train", "test": "test"},
    "fashion_mnist": {"train": "train", "test": "test"},
    "imagenet2012": {"train": "train", "test": "validation"},
    "food101": {"train": "train", "test": "validation"},
}
# Datasets whose TFDS builder reads manually downloaded files.
MANUAL_DIR_DATASETS = ("imagenet2012",)
# Where TFDS downloads each catalog dataset from (host, port of its URL).
DOWNLOAD_HOSTS = {
    "cifar10": ("www.cs.toronto.edu", 443),
    "fashion_mnist": ("fashion-mnist.s3-website.eu-central-1.amazonaws.com",
                      80),
    "food101": ("data.vision.ee.ethz.ch", 80),
}
# Seconds to wait for the download host before giving up (TFDS itself retries
# for minutes).
PROBE_TIMEOUT_S = 5.0
_PATH_HINT = ("--config.data.path= pointing at a local copy (an ImageFolder "
              "directory or .tar.gz laid out <split>/<class>/<image>, or a "
              "directory of IDX files)")

__all__ = ["KNOWN_DATASETS", "DirectorySource", "TfdsSource", "get_source",
           "prepare"]


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


def _capped_array_source(src: source_protocol.ArraySource,
                         caps: Mapping[str, int | None]
                         ) -> source_protocol.ArraySource:
  splits = {}
  for split in src.splits:
    images, labels = src.arrays(split)
    cap = caps.get(split)
    splits[split] = (images[:cap], labels[:cap])
  info = source_protocol.DatasetInfo(
      name=src.info.name, num_classes=src.info.num_classes,
      image_shape=src.info.image_shape,
      num_examples={k: len(v[0]) for k, v in splits.items()},
      class_names=src.info.class_names)
  return source_protocol.ArraySource(info, splits)


def _check_usable(src, where: str, found_splits=None) -> None:
  """Refuses a dataset without 'train' or 'test' split or with < 2 classes."""
  missing = [s for s in ("train", "test") if s not in src.splits]
  if missing:
    found = sorted(found_splits if found_splits is not None else src.splits)
    raise DataError(f"{where} has no {missing[0]!r} split (found {found}); "
                    "expected train/ and test/ (or validation/) folders")
  n = src.info.num_classes
  if n < 2:
    names = list(src.info.class_names or ())
    raise DataError(f"{where} has {n} class{'' if n == 1 else 'es'} {names}; "
                    "a classification benchmark needs at least 2")


def prepare(data_config: Mapping[str, Any]) -> str:
  """Prepares `config.data.path` with the offline builders (once).

  Args:
    data_config: `config.data` with `path` set.

  Returns:
    The prepared TFDS directory (for `DirectorySource`).

  Raises:
    DataError: one line naming the path or the file that is unusable.
  """
  path = data_config.get("path")
  full = os.path.expanduser(path)
  if not os.path.exists(full):
    raise DataError(f"config.data.path: {path} does not exist")
  data_dir = data_config.get("data_dir")
  name = data_config.get("name")
  if idx.is_idx_dir(full):
    class_names = {"fashion_mnist": idx.FASHION_MNIST_CLASSES,
                   "mnist": idx.MNIST_CLASSES}.get(name, ())
    return idx.prepare_idx(full, data_dir, class_names=class_names)
  if os.path.isdir(full) or full.lower().endswith(
      offline_builder.TAR_SUFFIXES):
    try:
      return image_folder.prepare_image_folder(full, data_dir)
    except image_folder.MissingSplitError as e:
      raise DataError(f"config.data.path: {path} {e.problem}") from None
  raise DataError(f"config.data.path: {path} is neither a directory (an "
                  "ImageFolder or IDX files) nor a .tar/.tar.gz archive")


def get_source(data_config: Mapping[str, Any]):
  """The Source that `config.data` describes.

  Args:
    data_config: `config.data` (name, path, data_dir, manual_dir, num_train,
      num_test, toy).

  Returns:
    A Source with 'train' and 'test' splits and at least 2 classes.

  Raises:
    ValueError: naming `config.data.name` or the field that is wrong.
    DataError: (a ValueError) one line naming the dataset's path or file that
      is unusable.
  """
  name = data_config.get("name")
  path = data_config.get("path")
  caps = _caps(data_config)
  if name == "toy":
    src = _capped_array_source(synthetic.toy_source(data_config.get("toy")),
                               caps)
    _check_usable(src, "config.data.toy")
    return src
  if path:  # Any name: the user's own dataset.
    src = DirectorySource(prepare(data_config), name=name, caps=caps)
    _check_usable(src, f"config.data.path: {path}",
                  found_splits=src.builder.info.splits)
    _log_dataset(src)
    return src
  src = _tfds_source(name, data_config, caps)
  _check_usable(src, f"dataset {name!r} at {src.builder.data_dir}")
  _log_dataset(src)
  return src


def _log_dataset(src):
  info = src.info
  logging.info("dataset %s: %s images, %d classes, %s", info.name,
               " / ".join(f"{info.num_examples[s]} {s}" for s in sorted(
                   info.num_examples, key=lambda s: (s != "train", s))),
               info.num_classes, "x".join(map(str, info.image_shape)))


def _unreachable(host: str, port: int, timeout: float) -> str | None:
  """Why host:port does not take a TCP connection within timeout (or None).

  Run in a thread, because name resolution ignores socket timeouts.
  """
  outcome = []

  def connect():
    try:
      socket.create_connection((host, port), timeout=timeout).close()
      outcome.append(None)
    except OSError as e:
      outcome.append(first_line(e))

  thread = threading.Thread(target=connect, daemon=True)
  thread.start()
  thread.join(timeout)
  return outcome[0] if outcome else f"no answer within {timeout:g} s"


def _check_downloadable(name: str, builder, manual_dir) -> None:
  """Fails at once when an unprepared dataset would need an absent network."""
  if name in MANUAL_DIR_DATASETS:
    if manual_dir is None:
      raise DataError(
          f"config.data.name={name!r} needs config.data.manual_dir (the "
          "directory holding its downloaded archives) to prepare it in "
          f"{builder.data_dir}, or {_PATH_HINT}")
    return
  if manual_dir is not None and os.path.isdir(manual_dir) and os.listdir(
      manual_dir):
    return  # TFDS takes the archive from manual_dir when it is there.
  host, port = DOWNLOAD_HOSTS.get(name, ("storage.googleapis.com", 443))
  reason = _unreachable(host, port, PROBE_TIMEOUT_S)
  if reason is not None:
    raise DataError(
        f"config.data.name={name!r} is not prepared in {builder.data_dir} and "
        f"its download host {host} cannot be reached ({reason}); without "
        f"network access set {_PATH_HINT}, or --config.data.manual_dir= to "
        "the folder holding its downloaded archive, or "
        "--config.data.data_dir= to a TFDS data_dir that holds it prepared")


def _birdsnap_source(data_config: Mapping[str, Any], manual_dir: str | None,
                     data_dir: str | None, caps: Mapping[str, int | None]
                     ) -> TfdsSource:
  """Birdsnap, prepared once from manual_dir by `birdsnap.py`'s builder.

  Not in the TFDS catalog: the builder reads the images that the dataset's
  download script left in manual_dir, and tolerates up to
  `config.data.max_missing_fraction` of a split absent (dead URLs; the
  builder's default where the config has no such field).

  Args:
    data_config: `config.data`.
    manual_dir: the Birdsnap folder (expanded), or None once prepared.
    data_dir: the TFDS data_dir (expanded), or None for TFDS's default.
    caps: our split name -> keep only the first N examples.

  Returns:
    The Source over the prepared builder.
  """
  # Imported here because it coordinates JAX processes (it imports jax).
  from roar_jax.data import birdsnap  # pylint: disable=g-import-not-at-top
  # Checked at start-up (config/validation.py).
  tolerance = data_config.get("max_missing_fraction")
  if tolerance is None:
    tolerance = birdsnap.DEFAULT_MAX_MISSING_FRACTION
  builder = birdsnap.birdsnap_source_builder(
      manual_dir, data_dir, max_missing_fraction=tolerance)
  return TfdsSource(builder, name="birdsnap",
                    split_map={"train": "train", "test": "test"}, caps=caps)


def _tfds_source(name: str, data_config: Mapping[str, Any],
                 caps: Mapping[str, int | None]) -> TfdsSource:
  """The TFDS catalog builder of `name`, prepared if needed."""
  data_dir = data_config.get("data_dir")
  data_dir = os.path.expanduser(data_dir) if data_dir else None
  manual_dir = data_config.get("manual_dir")
  manual_dir = os.path.expanduser(manual_dir) if manual_dir else None
  if name == "birdsnap":
    return _birdsnap_source(data_config, manual_dir, data_dir, caps)
  if name not in TFDS_SPLITS:
    raise ValueError(
        f"config.data.name={name!r} is not a known dataset (known: "
        f"{sorted(KNOWN_DATASETS)}): set config.data.path to its images in "
        "ImageFolder layout (train/<class>/*.jpg, test/<class>/*.jpg) or IDX "
        "files")
  builder = tfds.builder(name, data_dir=data_dir)
  if not os.path.exists(os.path.join(os.fspath(builder.data_dir),
                                     "dataset_info.json")):
    _check_downloadable(name, builder, manual_dir)
    try:
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    except Exception as e:  # Download and preparation raise many types.
      raise DataError(
          f"could not prepare TFDS dataset {name!r} in {builder.data_dir} "
          f"({first_line(e)}); without network access set {_PATH_HINT}"
          ) from None
  return TfdsSource(builder, name=name, split_map=TFDS_SPLITS[name], caps=caps)
