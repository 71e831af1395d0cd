"""`RoarImageFolder`: images in `[root/]<split>/<class>/` folders, as TFDS.

The input is a directory or a .tar / .tar.gz laid out
`[root/]<split>/<class>/<image>.jpg|.jpeg|.png` (the ImageFolder layout of
../shared/data/cifar10-jpeg.tar.gz). Classes are the sorted union of the class
folders of all splits. JPEG and RGB PNG files are stored as they are (no
re-encoding, so no quality loss); other images (gray, CMYK, BMP, GIF, ...) are
converted to RGB and stored as PNG. Hidden files and files that are obviously
not images (README, *.txt, *.json, ...) are skipped; any other file in a class
folder is refused by name.

Every image is decoded fully once while preparing: a truncated or corrupt one
fails then, with its path (and its member name in an archive).

Order: the files of each class sorted by name, the classes taken in turn (1st
file of every class in class order, then every 2nd file, ...), so that any
window of the stream (a shuffle buffer, a process slice, the first N examples)
is class-balanced; `index` is the position in the split and `file_name` keeps
the relative path of each example.
"""

import dataclasses
import os
import re
import tarfile
import zlib
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from roar_jax.data import image_files
from roar_jax.data import offline_builder
from roar_jax.data import tfds_source
from roar_jax.data.errors import DataError, first_line


class MissingSplitError(DataError):
  """The input has no train/ or no test/ split folder.

  Raised by the scan, before anything is prepared. `problem` is the message
  without the path, so that the caller can name the path its own way
  (`config.data.path: ...`).
  """

  def __init__(self, path: str, missing: str, found: list[str]):
    stand_ins = [s + "/" for s in tfds_source.TEST_STAND_INS if s != missing]
    instead = (f" (or {' or '.join(stand_ins)})" if missing == "test" else "")
    self.problem = (
        f"has no {missing!r} split (found {found}): a {missing}/ folder"
        f"{instead} is missing beside {', '.join(f + '/' for f in found)}; "
        "expected [root/]<split>/<class>/<image> with train/ and test/")
    super().__init__(f"{path} {self.problem}")


@dataclasses.dataclass(frozen=True)
class _FolderEntry:
  relpath: str  # <split>/<class>/<file>, the sort key and `file_name`.
  member: str  # Name inside the archive, or path relative to the directory.
  label: int
  index: int
  needs_conversion: bool  # Not an RGB JPEG/PNG: re-encode as RGB PNG.


@dataclasses.dataclass(frozen=True)
class _FolderListing:
  class_names: tuple[str, ...]
  splits: dict[str, list[_FolderEntry]]
  image_shape: tuple[int | None, int | None, int]
  encoding: str


@dataclasses.dataclass(frozen=True)
class _Found:
  split: str
  cls: str
  relpath: str
  member: str
  header: tuple[tuple[int, int], str, str]  # (width, height), mode, format.


def where(path: str, member: str) -> str:
  """How errors name a file of the input: its path, or archive and member."""
  if offline_builder.is_tar(path):
    return f"{path}, member {member}"
  return os.path.join(path, member)


def _iter_folder_files(path: str) -> Iterator[tuple[str, bytes | None]]:
  """(relative name, bytes or None) of every regular file of the input.

  For a directory the bytes are read lazily (None here); for a tar archive
  the bytes of image files are read while streaming, since a stream cannot
  seek back.
  """
  if not offline_builder.is_tar(path):
    for root, dirs, files in os.walk(path):
      dirs[:] = sorted(d for d in dirs if not d.startswith("."))
      for f in sorted(files):
        yield os.path.relpath(os.path.join(root, f), path), None
    return
  last = None
  try:
    with tarfile.open(path, "r|*") as tar:
      for member in tar:
        if member.isfile():
          data = None
          if image_files.is_image_name(member.name):
            data = tar.extractfile(member).read()
          last = member.name
          yield member.name, data
  except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
    after = f" after member {last}" if last else ""
    raise DataError(f"{path}: cannot read the archive{after} "
                    f"({first_line(e)}); it is truncated or corrupt") from None


def _read_file(path: str, member: str, size: int = -1) -> bytes:
  try:
    with open(os.path.join(path, member), "rb") as f:
      return f.read(size)
  except OSError as e:
    raise DataError(f"{where(path, member)}: cannot read the file "
                    f"({e.strerror or first_line(e)})") from None


def _round_robin(rows: list[Any], key) -> list[Any]:
  """Sorted rows reordered class by class: 1st of each class, 2nd of each, ...

  A split stored class after class would make every window of the stream one
  or two classes wide: a shuffle buffer smaller than the split, a process
  slice, or the first N examples would then be nearly single-class. Taking the
  classes in turn keeps each of them class-balanced and the order
  deterministic.
  """
  seen: dict[Any, int] = {}
  ranked = []
  for row in rows:
    k = key(row)
    ranked.append((seen.get(k, 0), k, row))
    seen[k] = seen.get(k, 0) + 1
  return [row for *_, row in sorted(ranked, key=lambda r: r[:2])]


def _check_input(path: str) -> None:
  if not os.path.exists(path):
    raise DataError(f"ImageFolder path {path} does not exist")
  if not (os.path.isdir(path) or offline_builder.is_tar(path)):
    raise DataError(f"ImageFolder path {path} must be a directory or a "
                    f"{'/'.join(offline_builder.TAR_SUFFIXES)} archive")


def _header_bytes(path: str, name: str, data: bytes | None) -> bytes:
  if data is not None:
    return data
  # A directory: the header is in the first bytes.
  data = _read_file(path, name, image_files.HEADER_BYTES)
  if image_files.parse_header(data) is None:
    data = _read_file(path, name)
  return data


def _found_image(path: str, name: str, norm: str, data: bytes) -> _Found:
  parts = norm.split("/")
  place = where(path, name)
  if len(parts) < 3:
    raise DataError(f"{place}: image outside the <split>/<class>/ layout")
  split = parts[-3]
  if not re.fullmatch(r"[A-Za-z0-9_]+", split):
    raise DataError(f"{place}: split folder {split!r} must be named with "
                    "letters, digits and '_' only")
  return _Found(split, parts[-2], "/".join(parts[-3:]), name,
                image_files.image_header(data, place))


def _list_images(path: str, keep_bytes: int
                 ) -> tuple[list[_Found], dict[str, bytes] | None]:
  """Every image of the input with its header; other files checked."""
  found, others, roots = [], [], set()
  kept, kept_size = ({} if offline_builder.is_tar(path) and keep_bytes > 0
                     else None), 0
  for name, data in _iter_folder_files(path):
    norm = name[2:] if name.startswith("./") else name
    if not image_files.is_image_name(norm):
      if not image_files.is_skipped_name(norm):
        others.append((name, norm))
      continue
    roots.add("/".join(norm.split("/")[:-3]))
    if len(roots) > 1:
      raise DataError(f"{path}: images under several roots {sorted(roots)};"
                      " expected [root/]<split>/<class>/<image>")
    data = _header_bytes(path, name, data)
    if kept is not None:
      kept[name] = data
      kept_size += len(data)
      if kept_size > keep_bytes:
        kept = None
    found.append(_found_image(path, name, norm, data))
  class_dirs = {os.path.dirname(f.member.removeprefix("./")) for f in found}
  for name, norm in others:
    if os.path.dirname(norm) in class_dirs:
      raise DataError(f"{where(path, name)}: not an image file (expected "
                      f"{'/'.join(image_files.IMAGE_EXTENSIONS)}); remove or "
                      "convert it")
    logging.warning("ImageFolder %s: skipping %s (not an image)", path, name)
  return found, kept


def _listing(path: str, found: list[_Found]) -> _FolderListing:
  """Labels, order and common shape of the found images."""
  if not found:
    raise DataError(f"{path}: no .jpg/.jpeg/.png images found; expected the "
                    "layout <split>/<class>/<image>, e.g. train/cat/0001.jpg")
  relpaths = sorted(f.relpath for f in found)
  for a, b in zip(relpaths, relpaths[1:]):
    if a == b:
      raise DataError(f"{path}: {a} appears twice")
  class_names = tuple(sorted({f.cls for f in found}))
  label_of = {c: i for i, c in enumerate(class_names)}
  splits: dict[str, list[_FolderEntry]] = {}
  for split in sorted({f.split for f in found}):
    rows = sorted((f for f in found if f.split == split),
                  key=lambda f: f.relpath)
    rows = _round_robin(rows, key=lambda f: label_of[f.cls])
    splits[split] = [
        _FolderEntry(relpath=f.relpath, member=f.member,
                     label=label_of[f.cls], index=i,
                     needs_conversion=(f.header[1] != "RGB" or
                                       f.header[2] not in ("jpeg", "png")))
        for i, f in enumerate(rows)]
  shapes = {(h, w) for (w, h), _, _ in (f.header for f in found)}
  h, w = shapes.pop() if len(shapes) == 1 else (None, None)
  encodings = {f.header[2] for f in found}
  encoding = "jpeg" if encodings == {"jpeg"} else "png"
  return _FolderListing(class_names, splits, (h, w, 3), encoding)


def scan_image_folder(path: str) -> _FolderListing:
  """Lists an ImageFolder input and checks every image's header.

  Args:
    path: directory or .tar/.tar.gz laid out `[root/]<split>/<class>/<image>`.

  Returns:
    The listing: class names, per-split entries in stored order with their
    labels and indices, the common image shape (None where sizes vary) and the
    common encoding.

  Raises:
    DataError: naming the path and what is missing or malformed
      (`MissingSplitError` for a missing train/ or test/ folder).
  """
  return _scan_image_folder(path, keep_bytes=0)[0]


def _scan_image_folder(path: str, keep_bytes: int
                       ) -> tuple[_FolderListing, dict[str, bytes] | None]:
  """The listing, and the archive's image bytes if they fit in `keep_bytes`.

  Keeping a small archive's bytes saves streaming it again for every split.
  """
  _check_input(path)
  found, kept = _list_images(path, keep_bytes)
  listing = _listing(path, found)
  _check_splits(path, listing.splits)
  return listing, kept


def _check_splits(path: str, splits) -> None:
  """A train/ and a test/ folder (or a stand-in for test/), checked while
  scanning: before the (slow) preparation, not after it."""
  found = sorted(splits)
  if "train" not in splits:
    raise MissingSplitError(path, "train", found)
  if not any(s in splits for s in tfds_source.TEST_STAND_INS):
    raise MissingSplitError(path, "test", found)


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(tfds.core.BuilderConfig):
  """Which ImageFolder input a `RoarImageFolder` reads."""
  path: str = ""


class RoarImageFolder(offline_builder.OfflineBuilder):
  """Images in `<split>/<class>/` folders (a directory or a tar archive)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  # Archives up to this size are read once and kept in memory while preparing.
  KEEP_ARCHIVE_BYTES = 512 << 20

  def _scan(self):
    if not hasattr(self, "_scanned"):
      self._scanned = _scan_image_folder(self.builder_config.path,
                                         self.KEEP_ARCHIVE_BYTES)
    return self._scanned

  @property
  def _listing(self) -> _FolderListing:
    return self._scan()[0]

  def _info(self) -> tfds.core.DatasetInfo:
    listing = self._listing
    return self.dataset_info_from_configs(
        description=f"ImageFolder dataset read from {self.builder_config.path}",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=listing.image_shape,
                                         encoding_format=listing.encoding),
            "label": tfds.features.ClassLabel(names=listing.class_names),
            "index": tfds.features.Scalar(np.int64),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is local.
    return {split: self._generate_examples(split)
            for split in self._listing.splits}

  def _entry_bytes(self, entries: list[_FolderEntry]
                   ) -> Iterator[tuple[_FolderEntry, bytes]]:
    """The encoded bytes of each entry (in archive order for a big archive)."""
    path = self.builder_config.path
    kept = self._scan()[1]
    if kept is not None:
      for entry in entries:
        yield entry, kept[entry.member]
    elif offline_builder.is_tar(path):
      # Archive order need not be sorted: the key carries the sorted position
      # and the writer orders by key.
      by_member = {e.member: e for e in entries}
      for name, data in _iter_folder_files(path):
        entry = by_member.get(name)
        if entry is not None:
          yield entry, data
    else:
      for entry in entries:
        yield entry, _read_file(path, entry.member)

  def _generate_examples(self, split: str):
    path = self.builder_config.path
    entries = self._listing.splits[split]
    chunk = []
    for entry, data in self._entry_bytes(entries):
      place = where(path, entry.member)
      if entry.needs_conversion:
        data = image_files.rgb_png(data, place)
      chunk.append((entry, place, data))
      if len(chunk) == image_files.CHECK_CHUNK:
        yield from _checked_examples(chunk, len(entries))
        chunk = []
    yield from _checked_examples(chunk, len(entries))


def _checked_examples(chunk: list[tuple[_FolderEntry, str, bytes]],
                      num_examples: int):
  """(key, example) of each entry, once every image of the chunk decodes.

  Decoding fully before anything is written names a corrupt image now, not
  inside TensorFlow in the middle of a training run.
  """
  image_files.check_decodable([(place, data) for _, place, data in chunk])
  for entry, _, data in chunk:
    yield offline_builder.order_key(entry.index, num_examples), {
        "image": data, "label": entry.label, "index": entry.index,
        "file_name": entry.relpath}


def image_folder_config(path: str) -> ImageFolderConfig:
  """The builder config of an ImageFolder input (name keyed by its content)."""
  return ImageFolderConfig(
      name=offline_builder.config_name(path, "image_folder"),
      path=os.path.realpath(os.path.expanduser(path)))


def prepare_image_folder(path: str, data_dir: str | None = None) -> str:
  """Prepares an ImageFolder input once; returns the prepared directory.

  Args:
    path: directory or .tar/.tar.gz laid out `[root/]<split>/<class>/<image>`.
    data_dir: TFDS data_dir (default ~/tensorflow_datasets).

  Returns:
    The directory of the prepared dataset (for `tfds.builder_from_directory`).

  Raises:
    DataError: one line naming the input or the file that is unusable.
  """
  if not os.path.exists(os.path.expanduser(path)):
    raise DataError(f"ImageFolder path {path} does not exist")
  return offline_builder.prepare(RoarImageFolder, image_folder_config(path),
                                 data_dir)
