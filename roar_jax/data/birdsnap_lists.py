"""The list files of a Birdsnap manual_dir: species, images, test split.

Birdsnap (Berg et al., CVPR 2014, v1.1) is a set of list files plus
`get_birdsnap.py`, a script that downloads each image from its original Flickr
URL. A manual_dir holds what that script left on disk:

  <manual_dir>/images.txt        url, md5, path, species_id, bounding box, parts
  <manual_dir>/species.txt       id, common, scientific, dir (ids 1..500)
  <manual_dir>/test_images.txt   header `path`, then the 2,443 test paths
  <manual_dir>/download/images/<species dir>/<file>.jpg

`read_lists` parses and checks them: `test` holds the images of
test_images.txt, `train` all others; labels are species_id - 1, named by the
species' common names. Listed images that are absent (dead URLs) are skipped
and counted; more than `max_missing_fraction` of a split absent fails, which
points to a wrong manual_dir or an unfinished download rather than to dead
links. Every failure is one line naming the file.
"""

import collections
import dataclasses
import os

from absl import logging
import tensorflow as tf

from roar_jax.data.errors import DataError

LIST_FILES = ("images.txt", "species.txt", "test_images.txt")
IMAGE_SUBDIR = os.path.join("download", "images")
NUM_CLASSES = 500
PAPER_NUM_TRAIN = 47_386
PAPER_NUM_TEST = 2_443
DEFAULT_MAX_MISSING_FRACTION = 0.1

_EXAMPLES_SHOWN = 5  # Paths named in an error message.

MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "download birdsnap.tgz (Birdsnap v1.1) from the dataset's page, unpack it "
    "into manual_dir and run `python get_birdsnap.py` there: manual_dir then "
    "holds images.txt, species.txt, test_images.txt and download/images/")


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


def _read_rows(path: str, required: tuple[str, ...]) -> list[dict[str, str]]:
  """Rows of a tab-separated list file with a header line, as dicts.

  Args:
    path: the file.
    required: columns the header must name.

  Returns:
    One dict per non-empty line after the header.

  Raises:
    DataError: a missing column, or a line with too few fields.
  """
  with tf.io.gfile.GFile(path, "r") as f:
    lines = f.read().splitlines()
  if not lines:
    raise DataError(f"Birdsnap list file {path} is empty")
  header = lines[0].split("\t")
  absent = [c for c in required if c not in header]
  if absent:
    raise DataError(f"Birdsnap list file {path}: the header line lacks the "
                    f"column(s) {absent} (header: {header})")
  position = {name: i for i, name in enumerate(header)}
  last = max(position[c] for c in required)
  rows = []
  for number, line in enumerate(lines[1:], start=2):
    if not line.strip():
      continue
    fields = line.split("\t")
    if len(fields) <= last:
      raise DataError(f"Birdsnap list file {path}, line {number}: "
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
    raise DataError(f"Birdsnap list file {path}: a species id is not an "
                    f"integer ({e})") from None
  if sorted(ids) != list(range(1, len(ids) + 1)):
    raise DataError(f"Birdsnap list file {path}: species ids must run from 1 "
                    f"to the number of species ({len(ids)}) without gaps or "
                    "repeats")
  names = [""] * len(ids)
  for species_id, row in zip(ids, rows):
    names[species_id - 1] = row["common"]
  if len(set(names)) != len(names):
    repeated = sorted(n for n, c in collections.Counter(names).items() if c > 1)
    raise DataError(f"Birdsnap list file {path}: repeated common names "
                    f"{repeated[:_EXAMPLES_SHOWN]}")
  if len(names) != NUM_CLASSES:
    logging.warning("Birdsnap: %s lists %d species (the dataset has %d)", path,
                    len(names), NUM_CLASSES)
  return tuple(names)


def _read_labels(images_txt: str, num_classes: int) -> dict[str, int]:
  """path -> label of images.txt, in its order (a repeated path once)."""
  rows = _read_rows(images_txt, ("path", "species_id"))
  labels = {}
  for row in rows:
    try:
      species_id = int(row["species_id"])
    except ValueError:
      raise DataError(f"Birdsnap list file {images_txt}: species_id "
                      f"{row['species_id']!r} of {row['path']} is not an "
                      "integer") from None
    if not 1 <= species_id <= num_classes:
      raise DataError(f"Birdsnap list file {images_txt}: species_id "
                      f"{species_id} of {row['path']} is not in species.txt "
                      f"(ids 1..{num_classes})")
    # A repeated path keeps its first row, so every image appears once.
    labels.setdefault(row["path"], species_id - 1)
  if len(labels) < len(rows):
    logging.warning("Birdsnap: %s repeats %d paths; each is used once",
                    images_txt, len(rows) - len(labels))
  return labels


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
      names = tf.io.gfile.listdir(os.path.join(image_dir, folder) if folder
                                  else image_dir)
    except tf.errors.NotFoundError:
      continue
    present.update(os.path.join(folder, n.rstrip("/")) if folder else
                   n.rstrip("/") for n in names)
  return present


def _check_layout(manual_dir, image_dir: str | None) -> str:
  """The image folder; every missing list file or folder named at once."""
  if manual_dir is None:
    raise DataError("Birdsnap needs a manual_dir (config.data.manual_dir): "
                    f"{MANUAL_DOWNLOAD_INSTRUCTIONS}")
  if not tf.io.gfile.isdir(manual_dir):
    raise DataError(f"Birdsnap manual_dir {manual_dir} does not exist: "
                    f"{MANUAL_DOWNLOAD_INSTRUCTIONS}")
  image_dir = (os.fspath(image_dir) if image_dir else
               os.path.join(manual_dir, IMAGE_SUBDIR))
  problems = [f"list file {name}" for name in LIST_FILES
              if not tf.io.gfile.exists(os.path.join(manual_dir, name))]
  if not tf.io.gfile.isdir(image_dir):
    problems.append(f"image folder {image_dir} (written by get_birdsnap.py)")
  if problems:
    hint = ""
    nested = os.path.join(manual_dir, "birdsnap")
    if tf.io.gfile.exists(os.path.join(nested, "images.txt")):
      hint = f" (the list files are in {nested}: pass that as manual_dir)"
    raise DataError(f"Birdsnap manual_dir {manual_dir} is incomplete{hint}; "
                    f"missing: {'; '.join(problems)}. To make it, "
                    f"{MANUAL_DOWNLOAD_INSTRUCTIONS}")
  return image_dir


def _split_paths(manual_dir: str, labels: dict[str, int]
                 ) -> dict[str, list[str]]:
  """split -> listed paths in images.txt order, from test_images.txt."""
  test_txt = os.path.join(manual_dir, "test_images.txt")
  test_paths = set(r["path"] for r in _read_rows(test_txt, ("path",)))
  unknown = sorted(test_paths - labels.keys())
  if unknown:
    raise DataError(f"Birdsnap list file {test_txt}: {len(unknown)} paths are "
                    f"not in images.txt, e.g. {unknown[:_EXAMPLES_SHOWN]}")
  listed = {"train": [p for p in labels if p not in test_paths],
            "test": [p for p in labels if p in test_paths]}
  for split, paths in listed.items():
    if not paths:
      raise DataError(f"Birdsnap manual_dir {manual_dir}: the {split} split "
                      "lists no images")
  return listed


def _missing(manual_dir: str, image_dir: str, listed: dict[str, list[str]],
             max_missing_fraction: float) -> tuple[dict, set[str]]:
  """split -> absent paths, and the present paths; too many absent fails."""
  present = _present_files(image_dir, [p for s in listed.values() for p in s])
  missing = {s: tuple(p for p in paths if p not in present)
             for s, paths in listed.items()}
  over = [s for s, paths in listed.items()
          if len(missing[s]) > max_missing_fraction * len(paths)]
  counts = ", ".join(f"{len(missing[s])} of {len(listed[s])} {s} images"
                     for s in listed)
  if over:
    examples = [p for s in over for p in missing[s]][:_EXAMPLES_SHOWN]
    raise DataError(
        f"Birdsnap manual_dir {manual_dir}: {counts} listed in images.txt are "
        f"absent from {image_dir}; the {' and '.join(over)} split(s) lack more "
        f"than max_missing_fraction={max_missing_fraction} (e.g. {examples}). "
        "Run get_birdsnap.py again to fetch what still downloads, or raise "
        "max_missing_fraction (config.data.max_missing_fraction) to accept a "
        "smaller dataset.")
  if any(missing.values()):
    logging.warning("Birdsnap: skipping %s that are absent (dead URLs)", counts)
  return missing, present


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
    DataError: manual_dir or a list file or the image folder is missing (the
      message names every missing one), a list file is malformed, the lists
      disagree, or too many images are absent (the message gives the counts).
  """
  if not 0 <= max_missing_fraction <= 1:
    raise ValueError(f"max_missing_fraction={max_missing_fraction} must lie "
                     "in [0, 1]")
  manual_dir = os.fspath(manual_dir) if manual_dir is not None else None
  image_dir = _check_layout(manual_dir, image_dir)
  class_names = _read_species(os.path.join(manual_dir, "species.txt"))
  labels = _read_labels(os.path.join(manual_dir, "images.txt"),
                        len(class_names))
  listed = _split_paths(manual_dir, labels)
  missing, present = _missing(manual_dir, image_dir, listed,
                              max_missing_fraction)
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
