"""Birdsnap (Berg et al., CVPR 2014) as a TFDS dataset built from a manual_dir.

Birdsnap is not in TFDS, and its images are not distributed: the dataset
(v1.1) is a set of list files plus `get_birdsnap.py`, a script that downloads
each image from its original Flickr URL. This module builds a TFDS dataset from
what that script left on disk (the layout and its checks: `birdsnap_lists.py`).

The ROAR paper (Hooker et al. 2019, Table 1) used 47,386 train and 2,443 test
images of 500 species, i.e. all 49,829 images of the list. Many URLs have died
since, so the number available depends on which ones still downloaded: listed
images that are absent are skipped and counted (stored in
`builder.info.metadata['missing']`), and preparation fails only when more than
`max_missing_fraction` of a split is absent.

Splits: `test` holds the images of test_images.txt, `train` all others. Each
split is stored shuffled, as TFDS builders do: images.txt may list the images
species by species, and read in that order a shuffle buffer (10,000 of about
47,000 images) would give batches that drift from class to class. The order is
that of a hash of each image's path, so it is the same on every machine, does
not depend on the order of images.txt, and the images two machines both have
keep their relative order. `index` is an example's position in its split
(0, 1, ...). Labels are species_id - 1, named by the species' common names.
"""

import hashlib
import io
import os
from typing import Sequence

import jax
from jax.experimental import multihost_utils
import numpy as np
import PIL.Image
import tensorflow as tf
import tensorflow_datasets as tfds

from roar_jax.data.birdsnap_lists import (DEFAULT_MAX_MISSING_FRACTION,
                                          IMAGE_SUBDIR, LIST_FILES,
                                          MANUAL_DOWNLOAD_INSTRUCTIONS,
                                          NUM_CLASSES, BirdsnapLists,
                                          read_lists)
from roar_jax.data.errors import DataError, first_line

__all__ = ["BirdsnapBuilder", "BirdsnapLists", "DEFAULT_MAX_MISSING_FRACTION",
           "IMAGE_SUBDIR", "LIST_FILES", "MANUAL_DOWNLOAD_INSTRUCTIONS",
           "NUM_CLASSES", "birdsnap_source_builder", "jpeg_bytes",
           "read_lists", "storage_order"]


def storage_order(examples: Sequence[tuple[str, int]]
                  ) -> list[tuple[str, int]]:
  """(path, label) pairs in the order they are stored: by a hash of the path.

  A deterministic shuffle: independent of the list's order and of which other
  images are present, so classes listed one after the other come out mixed.
  """
  return sorted(examples,
                key=lambda e: (hashlib.sha1(e[0].encode()).digest(), e[0]))


def jpeg_bytes(path: str) -> bytes:
  """The image file as JPEG bytes, re-encoding what is not RGB or gray JPEG.

  Every image is decoded once (at 1/8 scale, which still reads the whole
  compressed stream) so that a truncated download fails here, naming the file,
  instead of in the middle of a training run.

  Args:
    path: the image file.

  Returns:
    JPEG-encoded bytes: the file itself when it already is a JPEG that
    TensorFlow decodes to RGB.

  Raises:
    DataError: the file cannot be read or is not a readable image.
  """
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      data = f.read()
  except (OSError, tf.errors.OpError) as e:
    raise DataError(f"Birdsnap image {path} cannot be read ({first_line(e)})"
                    ) from None
  try:
    with PIL.Image.open(io.BytesIO(data)) as image:
      if image.format == "JPEG" and image.mode in ("RGB", "L"):
        image.draft(image.mode, (max(1, image.width // 8),
                                 max(1, image.height // 8)))
        image.load()
        return data
      # PNG/GIF saved under .jpg, or CMYK JPEG: store as RGB JPEG.
      rgb = np.asarray(image.convert("RGB"))
  except (OSError, SyntaxError, ValueError) as e:
    raise DataError(
        f"Birdsnap image {path} cannot be read ({first_line(e)}); a damaged "
        "or partial "
        "download: delete it (it then counts as absent) or download it "
        "again") from None
  out = io.BytesIO()
  PIL.Image.fromarray(rgb).save(out, format="JPEG", quality=95)
  return out.getvalue()


class BirdsnapBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Birdsnap from a manual_dir (see the module docstring).

  Not registered with TFDS (it is not one of its datasets): build it with
  `birdsnap_source_builder`, or construct it and call `download_and_prepare`
  with `download_config=tfds.download.DownloadConfig(manual_dir=...)`. Prepared
  data reads back with `tfds.builder_from_directory` as well.
  """

  name = "birdsnap"
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "Birdsnap v1.1 lists; train/test as in the paper.",
      "1.1.0": "Examples stored shuffled (by a hash of the path), not in "
               "images.txt order.",
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  # TFDS looks for a checksums file next to a builder's code, and on the way
  # needs the `importlib_resources` backport, which it does not install on
  # Python 3.11; this builder downloads nothing, so there is nothing to look up.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return None

  def __init__(self, *, max_missing_fraction: float = (
      DEFAULT_MAX_MISSING_FRACTION), image_dir: str | None = None, **kwargs):
    """Builds the builder.

    Args:
      max_missing_fraction: see `read_lists`.
      image_dir: see `read_lists`; default manual_dir/download/images.
      **kwargs: `tfds.core.DatasetBuilder` arguments (data_dir, ...).
    """
    self._max_missing_fraction = max_missing_fraction
    self._image_dir = image_dir
    super().__init__(**kwargs)
    # Pickling rebuilds the builder from these arguments.
    self._original_state.update(max_missing_fraction=max_missing_fraction,
                                image_dir=image_dir)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=(
            "Birdsnap v1.1 (Berg et al. 2014): North American bird species, "
            "Flickr images as downloaded by get_birdsnap.py; absent images "
            "are skipped (counts in metadata['missing'])."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3),
                                         encoding_format="jpeg"),
            # The names (and their number) come from species.txt when the
            # dataset is prepared, and from label.labels.txt when it is read.
            "label": tfds.features.ClassLabel(),
            "index": np.int64,
        }),
        supervised_keys=("image", "label"),
        homepage="http://thomasberg.org/datasets/birdsnap/1.1/",
        citation=(
            "@inproceedings{berg2014birdsnap, title={Birdsnap: Large-scale "
            "Fine-grained Visual Categorization of Birds}, author={Berg, "
            "Thomas and Liu, Jiongxin and Lee, Seung Woo and Alexander, "
            "Michelle L. and Jacobs, David W. and Belhumeur, Peter N.}, "
            "booktitle={CVPR}, year={2014}}"),
        metadata=tfds.core.MetadataDict(),
        # Examples are written in key order (the index), not hash order, so
        # that reading a split without shuffling yields index 0, 1, 2, ...
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    try:
      manual_dir = dl_manager.manual_dir
    except AssertionError:  # TFDS asserts that it exists and is not empty.
      manual_dir = dl_manager._manual_dir  # pylint: disable=protected-access
    lists = read_lists(os.fspath(manual_dir) if manual_dir else None,
                       image_dir=self._image_dir,
                       max_missing_fraction=self._max_missing_fraction)
    self.info.features["label"].names = list(lists.class_names)
    self.info.metadata["num_listed"] = dict(lists.num_listed)
    self.info.metadata["missing"] = {s: len(m) for s, m in
                                     lists.missing.items()}
    return {split: self._generate_examples(lists.image_dir, examples)
            for split, examples in lists.examples.items()}

  def _generate_examples(self, image_dir, examples):
    for index, (path, label) in enumerate(storage_order(examples)):
      yield index, {"image": jpeg_bytes(os.path.join(image_dir, path)),
                    "label": label, "index": index}


def _is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
  return tf.io.gfile.exists(
      os.path.join(os.fspath(builder.data_dir), "dataset_info.json"))


def _prepare(manual_dir: str | None, data_dir: str | None, **kwargs
             ) -> BirdsnapBuilder:
  builder = BirdsnapBuilder(data_dir=data_dir, **kwargs)
  if _is_prepared(builder):
    return builder
  # Checked before TFDS starts, so that a bad manual_dir fails with our message.
  read_lists(manual_dir, image_dir=kwargs.get("image_dir"),
             max_missing_fraction=kwargs.get(
                 "max_missing_fraction", DEFAULT_MAX_MISSING_FRACTION))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def birdsnap_source_builder(
    manual_dir: str | None, data_dir: str | None, *,
    max_missing_fraction: float = DEFAULT_MAX_MISSING_FRACTION,
    image_dir: str | None = None) -> BirdsnapBuilder:
  """The prepared Birdsnap builder: built from manual_dir once, then reused.

  With several JAX processes, process 0 prepares first and the others wait at
  a barrier, then find the prepared dataset (a shared data_dir) or prepare
  their own copy (a data_dir on each host's local disk).

  Args:
    manual_dir: the Birdsnap folder (see the module docstring); needed only
      while data_dir does not hold the prepared dataset yet.
    data_dir: TFDS data_dir; None means TFDS's default (~/tensorflow_datasets).
    max_missing_fraction: see `read_lists`.
    image_dir: see `read_lists`.

  Returns:
    A `BirdsnapBuilder` whose splits 'train' and 'test' are ready to read.

  Raises:
    DataError: as `read_lists`, when the dataset must be prepared.
  """
  kwargs = dict(max_missing_fraction=max_missing_fraction, image_dir=image_dir)
  if jax.process_count() == 1:
    return _prepare(manual_dir, data_dir, **kwargs)
  if jax.process_index() == 0:
    _prepare(manual_dir, data_dir, **kwargs)
  multihost_utils.sync_global_devices("birdsnap_prepared")
  return _prepare(manual_dir, data_dir, **kwargs)
