"""Birdsnap (Berg et al., CVPR 2014) as a TFDS dataset built from a manual_dir.

Birdsnap is not in TFDS, and its images are not distributed: the dataset
(v1.1) is a set of list files plus `get_birdsnap.py`, a script that downloads
each image from its original Flickr URL. This module builds a TFDS dataset from
what that script left on disk:

  <manual_dir>/images.txt        url, md5, path, species_id, bounding box, parts
  <manual_dir>/species.txt       id, common, scientific, dir (ids 1..500)
  <manual_dir>/test_images.txt   header `path`, then the 2,443 test paths
  <manual_dir>/download/images/<species dir>/<file>.jpg

The ROAR paper (Hooker et al. 2019, Table 1) used 47,386 train and 2,443 test
images of 500 species, i.e. all 49,829 images of the list. Many URLs have died
since, so the number available depends on which ones still downloaded: listed
images that are absent are skipped and counted (stored in
`builder.info.metadata['missing']`), and preparation fails only when more than
`max_missing_fraction` of a split is absent, which points to a wrong manual_dir
or an unfinished download rather than to dead links.

Splits: `test` holds the images of test_images.txt, `train` all others. Both
follow the order of images.txt, and `index` is an example's position in its
split (0, 1, ...), so the order is the same on every machine that has the same
images. Labels are species_id - 1, named by the species' common names.
"""

import collections
import dataclasses
import io
import os

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import PIL.Image
import tensorflow as tf
import tensorflow_datasets as tfds

LIST_FILES = ("images.txt", "species.txt", "test_images.txt")
IMAGE_SUBDIR = os.path.join("download", "images")
NUM_CLASSES = 500
PAPER_NUM_TRAIN = 47_386
PAPER_NUM_TEST = 2_443
DEFAULT_MAX_MISSING_FRACTION = 0.1

_EXAMPLES_SHOWN = 5  # Paths named in an error message.

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download birdsnap.tgz (Birdsnap v1.1) from the dataset's page, unpack it into
manual_dir, and run `python get_birdsnap.py` inside manual_dir: it downloads
the images into manual_dir/download/images/<species dir>/<file>.jpg. manual_dir
then holds images.txt, species.txt, test_images.txt and download/images/.
Images whose URL no longer works are skipped (see max_missing_fraction).
"""


@dataclasses.dataclass(frozen=True)
class BirdsnapLists:
  """The parsed list files of a Birdsnap manual_dir.

  Attributes:
    class_names: common name of each species, index = label = species_id - 1.
    examples: split -> ((relative image path, label), ...) of the images that
      are present, in images.txt order.
    num_listed: split -> number of images the list files assign to the split.
    missing: split -> relative paths of listed images that are absent.
    image_dir: the directory the relative paths are under.
  """
  class_names: tuple[str, ...]
  examples: dict[str, tuple[tuple[str, int], ...]]
  num_listed: dict[str, int]
  missing: dict[str, tuple[str, ...]]
  image_dir: str


def _join(*parts: str) -> str:
  return os.path.join(*parts)


def _read_rows(path: str, required: tuple[str, ...]) -> list[dict[str, str]]:
  """Rows of a tab-separated list file with a header line, as dicts.

  Args:
    path: the file.
    required: columns the header must name.

  Returns:
    One dict per non-empty line after the header.

  Raises:
    ValueError: a missing column, or a line with too few fields.
  """
  with tf.io.gfile.GFile(path, "r") as f:
    lines = f.read().splitlines()
  if not lines:
    raise ValueError(f"Birdsnap list file {path} is empty")
  header = lines[0].split("\t")
  absent = [c for c in required if c not in header]
  if absent:
    raise ValueError(f"Birdsnap list file {path}: the header line lacks the "
                     f"column(s) {absent} (header: {header})")
  position = {name: i for i, name in enumerate(header)}
  last = max(position[c] for c in required)
  rows = []
  for number, line in enumerate(lines[1:], start=2):
    if not line.strip():
      continue
    fields = line.split("\t")
    if len(fields) <= last:
      raise ValueError(f"Birdsnap list file {path}, line {number}: "
                       f"{len(fields)} tab-separated fields, expected "
                       f"{len(header)}")
    rows.append({c: fields[position[c]].strip() for c in required})
  return rows


def _read_species(path: str) -> tuple[str, ...]:
  """Common names by label from species.txt, checking ids run 1..N."""
  rows = _read_rows(path, ("id", "common"))
  try:
    ids = [int(r["id"]) for r in rows]
  except ValueError as e:
    raise ValueError(f"Birdsnap list file {path}: a species id is not an "
                     f"integer ({e})") from None
  if sorted(ids) != list(range(1, len(ids) + 1)):
    raise ValueError(f"Birdsnap list file {path}: species ids must run from 1 "
                     f"to the number of species ({len(ids)}) without gaps or "
                     "repeats")
  names = [""] * len(ids)
  for species_id, row in zip(ids, rows):
    names[species_id - 1] = row["common"]
  if len(set(names)) != len(names):
    repeated = sorted(n for n, c in collections.Counter(names).items() if c > 1)
    raise ValueError(f"Birdsnap list file {path}: repeated common names "
                     f"{repeated[:_EXAMPLES_SHOWN]}")
  if len(names) != NUM_CLASSES:
    logging.warning("Birdsnap: %s lists %d species (the dataset has %d)", path,
                    len(names), NUM_CLASSES)
  return tuple(names)


def _present_files(image_dir: str, paths: list[str]) -> set[str]:
  """Which relative paths exist, with one directory listing per folder.

  Listing folders instead of testing 50k files one by one keeps this fast on
  Cloud Storage as well as on a local disk.
  """
  by_folder = collections.defaultdict(list)
  for p in paths:
    by_folder[os.path.dirname(p)].append(p)
  present = set()
  for folder in by_folder:
    try:
      names = tf.io.gfile.listdir(_join(image_dir, folder) if folder else
                                  image_dir)
    except tf.errors.NotFoundError:
      continue
    present.update(_join(folder, n.rstrip("/")) if folder else n.rstrip("/")
                   for n in names)
  return present


def _layout_error(manual_dir: str, problems: list[str]) -> ValueError:
  hint = ""
  nested = _join(manual_dir, "birdsnap")
  if tf.io.gfile.exists(_join(nested, "images.txt")):
    hint = f" (the list files are in {nested}: pass that as manual_dir)"
  return ValueError(
      f"Birdsnap manual_dir {manual_dir} is incomplete{hint}; missing: "
      + "; ".join(problems) + ".\n" + MANUAL_DOWNLOAD_INSTRUCTIONS)


def read_lists(manual_dir: str, *, image_dir: str | None = None,
               max_missing_fraction: float = DEFAULT_MAX_MISSING_FRACTION
               ) -> BirdsnapLists:
  """Reads and checks a Birdsnap manual_dir; see the module docstring.

  Args:
    manual_dir: the directory that holds the list files.
    image_dir: where the images are; default manual_dir/download/images.
    max_missing_fraction: the largest fraction of a split's listed images that
      may be absent (skipped); more fails.

  Returns:
    The species names and the present images of each split.

  Raises:
    ValueError: manual_dir or a list file or the image folder is missing (the
      message names every missing one), a list file is malformed, the lists
      disagree, or too many images are absent (the message gives the counts).
  """
  if manual_dir is None:
    raise ValueError("Birdsnap needs a manual_dir (config.data.manual_dir): "
                     "the folder with images.txt, species.txt, "
                     "test_images.txt and download/images/.\n"
                     + MANUAL_DOWNLOAD_INSTRUCTIONS)
  manual_dir = os.fspath(manual_dir)
  if not 0 <= max_missing_fraction <= 1:
    raise ValueError(f"max_missing_fraction={max_missing_fraction} must lie "
                     "in [0, 1]")
  if not tf.io.gfile.isdir(manual_dir):
    raise ValueError(f"Birdsnap manual_dir {manual_dir} does not exist.\n"
                     + MANUAL_DOWNLOAD_INSTRUCTIONS)
  image_dir = os.fspath(image_dir) if image_dir else _join(manual_dir,
                                                           IMAGE_SUBDIR)
  problems = [f"list file {name}" for name in LIST_FILES
              if not tf.io.gfile.exists(_join(manual_dir, name))]
  if not tf.io.gfile.isdir(image_dir):
    problems.append(f"image folder {image_dir} (written by get_birdsnap.py)")
  if problems:
    raise _layout_error(manual_dir, problems)

  class_names = _read_species(_join(manual_dir, "species.txt"))
  images_txt = _join(manual_dir, "images.txt")
  rows = _read_rows(images_txt, ("path", "species_id"))
  labels = {}
  for row in rows:
    try:
      species_id = int(row["species_id"])
    except ValueError:
      raise ValueError(f"Birdsnap list file {images_txt}: species_id "
                       f"{row['species_id']!r} of {row['path']} is not an "
                       "integer") from None
    if not 1 <= species_id <= len(class_names):
      raise ValueError(f"Birdsnap list file {images_txt}: species_id "
                       f"{species_id} of {row['path']} is not in species.txt "
                       f"(ids 1..{len(class_names)})")
    # A repeated path keeps its first row, so every image appears once.
    labels.setdefault(row["path"], species_id - 1)
  if len(labels) < len(rows):
    logging.warning("Birdsnap: %s repeats %d paths; each is used once",
                    images_txt, len(rows) - len(labels))

  test_txt = _join(manual_dir, "test_images.txt")
  test_paths = set(r["path"] for r in _read_rows(test_txt, ("path",)))
  unknown = sorted(test_paths - labels.keys())
  if unknown:
    raise ValueError(f"Birdsnap list file {test_txt}: {len(unknown)} paths are "
                     f"not in images.txt, e.g. {unknown[:_EXAMPLES_SHOWN]}")
  listed = {"train": [p for p in labels if p not in test_paths],
            "test": [p for p in labels if p in test_paths]}
  for split, paths in listed.items():
    if not paths:
      raise ValueError(f"Birdsnap manual_dir {manual_dir}: the {split} split "
                       "lists no images")

  present = _present_files(image_dir, list(labels))
  missing = {s: tuple(p for p in paths if p not in present)
             for s, paths in listed.items()}
  over = [s for s, paths in listed.items()
          if len(missing[s]) > max_missing_fraction * len(paths)]
  counts = ", ".join(f"{len(missing[s])} of {len(listed[s])} {s} images"
                     for s in listed)
  if over:
    examples = [p for s in over for p in missing[s]][:_EXAMPLES_SHOWN]
    raise ValueError(
        f"Birdsnap manual_dir {manual_dir}: {counts} listed in images.txt are "
        f"absent from {image_dir}; the {' and '.join(over)} split(s) lack more "
        f"than max_missing_fraction={max_missing_fraction} (e.g. {examples}). "
        "Run get_birdsnap.py again to fetch what still downloads, or raise "
        "max_missing_fraction (config.data.max_missing_fraction) to accept a "
        "smaller dataset.")
  if any(missing.values()):
    logging.warning("Birdsnap: skipping %s that are absent (dead URLs)", counts)
  examples = {s: tuple((p, labels[p]) for p in paths if p in present)
              for s, paths in listed.items()}
  logging.info("Birdsnap: %d train and %d test images (the paper had %d and "
               "%d)", len(examples["train"]), len(examples["test"]),
               PAPER_NUM_TRAIN, PAPER_NUM_TEST)
  return BirdsnapLists(
      class_names=class_names,
      examples=examples,
      num_listed={s: len(paths) for s, paths in listed.items()},
      missing=missing,
      image_dir=image_dir)


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
    ValueError: the file is not a readable image.
  """
  with tf.io.gfile.GFile(path, "rb") as f:
    data = f.read()
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
    raise ValueError(
        f"Birdsnap image {path} cannot be read ({e}); a damaged or partial "
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
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Birdsnap v1.1 lists; train/test as in the paper."}
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
    for index, (path, label) in enumerate(examples):
      yield index, {"image": jpeg_bytes(_join(image_dir, path)),
                    "label": label, "index": index}


def _is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
  return tf.io.gfile.exists(
      _join(os.fspath(builder.data_dir), "dataset_info.json"))


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
    ValueError: as `read_lists`, when the dataset must be prepared.
  """
  kwargs = dict(max_missing_fraction=max_missing_fraction, image_dir=image_dir)
  if jax.process_count() == 1:
    return _prepare(manual_dir, data_dir, **kwargs)
  if jax.process_index() == 0:
    _prepare(manual_dir, data_dir, **kwargs)
  multihost_utils.sync_global_devices("birdsnap_prepared")
  return _prepare(manual_dir, data_dir, **kwargs)
