"""Offline TFDS builders: local files -> a prepared TFDS dataset, no network.

Three builders, each configured by the local input it reads:

- `RoarImageFolder`: a directory or a .tar / .tar.gz laid out
  `[root/]<split>/<class>/<image>.jpg|.jpeg|.png` (the ImageFolder layout of
  ../shared/data/cifar10-jpeg.tar.gz). Classes are the sorted union of the
  class folders of all splits. The encoded files are stored as they are
  (no re-encoding, so no quality loss); images that are not RGB are converted
  to RGB and stored as PNG.
- `RoarIdx`: a directory of IDX files (MNIST / Fashion-MNIST:
  `train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`,
  `t10k-images-idx3-ubyte[.gz]`, `t10k-labels-idx1-ubyte[.gz]`).
- `RoarToy`: the synthetic toy dataset of `synthetic.py`, with its masks, so
  that it can be read through TFDS like everything else.

Every example carries `index`, its position in its split. Examples are
written in a global deterministic order with TFDS shuffling disabled, so
reading with `shuffle_files=False` and interleave cycle length 1 returns
position order. IDX: file order. ImageFolder: the files of each class sorted
by name, the classes taken in turn (1st file of every class in class order,
then every 2nd file, ...), so that any window of the stream (a shuffle buffer,
a process slice, the first N examples) is class-balanced; `file_name` keeps
the relative path of each example.

A prepared dataset lives under
`<data_dir>/<builder>/<config name>/<version>/`; the config name is derived
from the input (a readable stem plus a hash of the resolved path, size and
modification time), so the same input is prepared once and found again, and a
different input never reuses it. `prepare_*` return that directory, which
`tfds.builder_from_directory` (and `sources.DirectorySource`) reads.
"""

import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import struct
import tarfile
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from roar_jax.data import synthetic

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(i) for i in range(10))

# IDX file name prefixes per split, as distributed with MNIST/Fashion-MNIST.
_IDX_PREFIXES = {"train": "train", "test": "t10k"}
# TFDS keys are 128-bit; with shuffling disabled the writer sorts by key and
# buckets by the key's leading bits, so spreading the keys over the whole range
# keeps both the order and the memory of the 1000 on-disk buckets bounded.
_KEY_RANGE = 2**128


def _order_key(index: int, num_examples: int) -> int:
  return index * (_KEY_RANGE // max(num_examples, 1))


def _input_fingerprint(*parts: Any) -> str:
  """Short hash of the inputs that define a prepared dataset."""
  return hashlib.sha1(json.dumps(parts, sort_keys=True,
                                 default=str).encode()).hexdigest()[:12]


def _path_fingerprint(path: str) -> list[Any]:
  """Resolved path plus, for a file, its size and modification time."""
  real = os.path.realpath(os.path.expanduser(path))
  if os.path.isfile(real):
    st = os.stat(real)
    return [real, st.st_size, st.st_mtime_ns]
  return [real]


def _config_name(path: str, *extra: Any) -> str:
  stem = os.path.basename(os.path.normpath(path)).lower()
  for suffix in TAR_SUFFIXES:
    stem = stem.removesuffix(suffix)
  stem = re.sub(r"[^a-z0-9]+", "_", stem).strip("_")[:40] or "data"
  return f"{stem}_{_input_fingerprint(_path_fingerprint(path), *extra)}"


def _is_tar(path: str) -> bool:
  return os.path.isfile(path) and path.lower().endswith(TAR_SUFFIXES)


class _OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder that reads only local input and orders examples by key."""

  # TFDS looks for a checksums file next to a builder's code, and on the way
  # needs the `importlib_resources` backport that it does not install; these
  # builders download nothing, so there is nothing to look up.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return None


def _prepared_dir(builder_cls, config, data_dir: str) -> str:
  return os.path.join(data_dir, builder_cls.name, config.name,
                      str(builder_cls.VERSION))


def _prepare(builder_cls, config, data_dir: str | None) -> str:
  """Prepares (once) and returns the directory of the prepared dataset."""
  data_dir = os.path.expanduser(data_dir or tfds.core.constants.DATA_DIR)
  prepared = _prepared_dir(builder_cls, config, data_dir)
  if os.path.exists(os.path.join(prepared, "dataset_info.json")):
    return prepared
  builder = builder_cls(data_dir=data_dir, config=config)
  logging.info("Preparing %s (%s) into %s", builder_cls.name,
               getattr(config, "path", config.name), prepared)
  try:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        try_download_gcs=False,
        compute_stats=tfds.download.ComputeStatsMode.SKIP))
  except OSError:
    # TFDS writes into a temporary directory and renames it: when several
    # processes prepare the same input at once, the later renames fail after
    # the first one succeeded, and the dataset is there to read.
    if os.path.exists(os.path.join(prepared, "dataset_info.json")):
      return prepared
    raise
  return os.fspath(builder.data_dir)


# ----------------------------------------------------------------------------
# ImageFolder


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


def _check_split_name(split: str, where: str) -> str:
  if not re.fullmatch(r"[A-Za-z0-9_]+", split):
    raise ValueError(f"{where}: split folder {split!r} must be named with "
                     "letters, digits and '_' only")
  return split


# Bytes read from each file of a directory to find its size and mode (JPEG
# headers can follow tens of kilobytes of EXIF data).
_HEADER_BYTES = 1 << 17
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (they hold the size); C4, C8 and CC are not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_MODES = {1: "L", 3: "RGB", 4: "CMYK"}


def _parse_header(data: bytes) -> tuple[tuple[int, int], str, str] | None:
  """(width, height), mode and format read from a PNG or JPEG header.

  About ten times faster than opening the image with PIL, which matters for
  archives of many small images; None when the bytes are neither (PIL then
  decides).
  """
  if data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR":
    width, height = struct.unpack(">II", data[16:24])
    rgb8 = data[24] == 8 and data[25] == 2  # 8-bit truecolor, no alpha.
    return (width, height), ("RGB" if rgb8 else "other"), "png"
  if data[:2] != b"\xff\xd8":
    return None
  i, n = 2, len(data)
  while i + 4 <= n:
    if data[i] != 0xFF:
      return None
    marker = data[i + 1]
    if marker == 0xFF:  # Fill byte.
      i += 1
      continue
    if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # No length field.
      i += 2
      continue
    length = (data[i + 2] << 8) | data[i + 3]
    if marker in _JPEG_SOF:
      if i + 10 > n:
        return None
      precision = data[i + 4]
      height, width = struct.unpack(">HH", data[i + 5:i + 9])
      mode = _JPEG_MODES.get(data[i + 9], "other") if precision == 8 else (
          "other")
      return (width, height), mode, "jpeg"
    i += 2 + length
  return None


def _image_header(data: bytes, where: str) -> tuple[tuple[int, int], str, str]:
  """(width, height), PIL mode and format of an encoded image (no decoding)."""
  parsed = _parse_header(data)
  if parsed is not None and parsed[0][0] > 0 and parsed[0][1] > 0:
    return parsed
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(io.BytesIO(data)) as img:
      return img.size, img.mode, (img.format or "").lower()
  except Exception as e:  # PIL raises several types for bad files.
    raise ValueError(f"{where}: not a readable image ({e})") from None


def _iter_folder_files(path: str) -> Iterator[tuple[str, bytes | None]]:
  """(relative name, bytes or None) of every regular file of the input.

  For a directory the bytes are read lazily (None here); for a tar archive
  they are read while streaming, since a stream cannot seek back.
  """
  if _is_tar(path):
    try:
      with tarfile.open(path, "r|*") as tar:
        for member in tar:
          if member.isfile():
            name = member.name
            if name.lower().endswith(IMAGE_EXTENSIONS):
              yield name, tar.extractfile(member).read()
            else:
              yield name, None
    except (tarfile.TarError, OSError, EOFError) as e:
      raise ValueError(f"{path}: cannot read the archive ({e})") from None
  else:
    for root, dirs, files in os.walk(path):
      dirs.sort()
      for f in sorted(files):
        yield os.path.relpath(os.path.join(root, f), path), None


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


def scan_image_folder(path: str) -> _FolderListing:
  """Lists an ImageFolder input and checks every image's header.

  Args:
    path: directory or .tar/.tar.gz laid out `[root/]<split>/<class>/<image>`.

  Returns:
    The listing: class names, per-split entries in sorted order with their
    labels and indices, the common image shape (None where sizes vary) and the
    common encoding.

  Raises:
    ValueError: naming the path and what is missing or malformed.
  """
  return _scan_image_folder(path, keep_bytes=0)[0]


def _scan_image_folder(path: str, keep_bytes: int
                       ) -> tuple[_FolderListing, dict[str, bytes] | None]:
  """The listing, and the archive's image bytes if they fit in `keep_bytes`.

  Keeping a small archive's bytes saves streaming it again for every split.
  """
  if not os.path.exists(path):
    raise ValueError(f"ImageFolder path {path} does not exist")
  if not (os.path.isdir(path) or _is_tar(path)):
    raise ValueError(f"ImageFolder path {path} must be a directory or a "
                     f"{'/'.join(TAR_SUFFIXES)} archive")
  found = []  # (split, class, relpath, member, header)
  roots = set()
  kept, kept_size = ({} if _is_tar(path) and keep_bytes > 0 else None), 0
  for name, data in _iter_folder_files(path):
    norm = name[2:] if name.startswith("./") else name
    if not norm.lower().endswith(IMAGE_EXTENSIONS):
      continue  # READMEs, .DS_Store and the like.
    parts = norm.split("/")
    where = f"{path}: {norm}"
    if len(parts) < 3:
      raise ValueError(f"{where}: image outside the <split>/<class>/ layout")
    roots.add("/".join(parts[:-3]))
    if len(roots) > 1:
      raise ValueError(f"{path}: images under several roots {sorted(roots)};"
                       " expected [root/]<split>/<class>/<image>")
    if data is None:  # A directory: the header is in the first bytes.
      with open(os.path.join(path, name), "rb") as f:
        data = f.read(_HEADER_BYTES)
        if _parse_header(data) is None:
          data += f.read()
    if kept is not None:
      kept[name] = data
      kept_size += len(data)
      if kept_size > keep_bytes:
        kept = None
    split = _check_split_name(parts[-3], where)
    found.append((split, parts[-2], "/".join(parts[-3:]), name,
                  _image_header(data, where)))
  relpaths = sorted(f[2] for f in found)
  for a, b in zip(relpaths, relpaths[1:]):
    if a == b:
      raise ValueError(f"{path}: {a} appears twice")
  if not found:
    raise ValueError(f"{path}: no .jpg/.jpeg/.png images found; expected "
                     "the layout <split>/<class>/<image>, e.g. "
                     "train/cat/0001.jpg")
  class_names = tuple(sorted({f[1] for f in found}))
  label_of = {c: i for i, c in enumerate(class_names)}
  shapes = {(h, w) for *_, ((w, h), _, _) in found}
  encodings = {fmt for *_, (_, _, fmt) in found}
  splits: dict[str, list[_FolderEntry]] = {}
  for split in sorted({f[0] for f in found}):
    rows = sorted((f for f in found if f[0] == split), key=lambda f: f[2])
    rows = _round_robin(rows, key=lambda f: label_of[f[1]])
    splits[split] = [
        _FolderEntry(relpath=rel, member=member, label=label_of[cls], index=i,
                     needs_conversion=(mode != "RGB" or
                                       fmt not in ("jpeg", "png")))
        for i, (_, cls, rel, member, (_, mode, fmt)) in enumerate(rows)]
  h, w = shapes.pop() if len(shapes) == 1 else (None, None)
  encoding = "jpeg" if encodings == {"jpeg"} else "png"
  return _FolderListing(class_names, splits, (h, w, 3), encoding), kept


def _rgb_png(data: bytes, where: str) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(io.BytesIO(data)) as img:
      out = io.BytesIO()
      img.convert("RGB").save(out, format="png")
      return out.getvalue()
  except Exception as e:  # PIL raises several types for bad files.
    raise ValueError(f"{where}: cannot decode the image ({e})") from None


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(tfds.core.BuilderConfig):
  """Which ImageFolder input a `RoarImageFolder` reads."""
  path: str = ""


class RoarImageFolder(_OfflineBuilder):
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

  def _generate_examples(self, split: str):
    path = self.builder_config.path
    entries = self._listing.splits[split]
    by_member = {e.member: e for e in entries}
    num = len(entries)

    def example(entry, data):
      if entry.needs_conversion:
        data = _rgb_png(data, f"{path}: {entry.relpath}")
      return _order_key(entry.index, num), {
          "image": data, "label": entry.label, "index": entry.index,
          "file_name": entry.relpath}

    kept = self._scan()[1]
    if kept is not None:
      for entry in entries:
        yield example(entry, kept[entry.member])
    elif _is_tar(path):
      # Archive order need not be sorted: the key carries the sorted position
      # and the writer orders by key.
      for name, data in _iter_folder_files(path):
        entry = by_member.get(name)
        if entry is not None:
          yield example(entry, data)
    else:
      for entry in entries:
        with open(os.path.join(path, entry.member), "rb") as f:
          yield example(entry, f.read())


def image_folder_config(path: str) -> ImageFolderConfig:
  """The builder config of an ImageFolder input (name keyed by the input)."""
  return ImageFolderConfig(name=_config_name(path, "image_folder"),
                           path=os.path.realpath(os.path.expanduser(path)))


def prepare_image_folder(path: str, data_dir: str | None = None) -> str:
  """Prepares an ImageFolder input once; returns the prepared directory.

  Args:
    path: directory or .tar/.tar.gz laid out `[root/]<split>/<class>/<image>`.
    data_dir: TFDS data_dir (default ~/tensorflow_datasets).

  Returns:
    The directory of the prepared dataset (for `tfds.builder_from_directory`).
  """
  if not os.path.exists(os.path.expanduser(path)):
    raise ValueError(f"ImageFolder path {path} does not exist")
  return _prepare(RoarImageFolder, image_folder_config(path), data_dir)


# ----------------------------------------------------------------------------
# IDX

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"),
               0x0E: np.dtype(">f8")}


def _open_idx(path: str):
  with open(path, "rb") as f:
    gzipped = f.read(2) == b"\x1f\x8b"
  return gzip.open(path, "rb") if gzipped else open(path, "rb")


def read_idx_header(path: str) -> tuple[np.dtype, tuple[int, ...]]:
  """(dtype, shape) of an IDX file (.gz or raw) from its header."""
  try:
    with _open_idx(path) as f:
      head = f.read(4)
      if len(head) < 4 or head[0] != 0 or head[1] != 0 or (
          head[2] not in _IDX_DTYPES) or head[3] == 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number "
                         f"{head.hex()})")
      raw_dims = f.read(4 * head[3])
  except (OSError, EOFError) as e:
    raise ValueError(f"{path}: cannot read the IDX file ({e})") from None
  if len(raw_dims) < 4 * head[3]:
    raise ValueError(f"{path}: IDX header truncated")
  shape = tuple(int(x) for x in np.frombuffer(raw_dims, dtype=">u4"))
  return np.dtype(_IDX_DTYPES[head[2]]), shape


def read_idx(path: str) -> np.ndarray:
  """The array an IDX file (.gz or raw) holds, checked against its header."""
  dtype, shape = read_idx_header(path)
  try:
    with _open_idx(path) as f:
      f.read(4 + 4 * len(shape))
      data = f.read()
  except (OSError, EOFError) as e:
    raise ValueError(f"{path}: cannot read the IDX file ({e})") from None
  expected = int(np.prod(shape)) * dtype.itemsize
  if len(data) != expected:
    raise ValueError(f"{path}: IDX data has {len(data)} bytes, the header "
                     f"{shape} needs {expected}")
  return np.frombuffer(data, dtype=dtype).reshape(shape).astype(
      dtype.newbyteorder("="))


def find_idx_files(path: str) -> dict[str, tuple[str, str]]:
  """split -> (images file, labels file) of an IDX directory.

  Raises:
    ValueError: naming the directory and the files that are missing.
  """
  if not os.path.isdir(path):
    raise ValueError(f"IDX path {path} is not a directory")
  out, missing = {}, []
  for split, prefix in _IDX_PREFIXES.items():
    files = []
    for kind, ndim in (("images", 3), ("labels", 1)):
      names = [f"{prefix}-{kind}-idx{ndim}-ubyte{gz}" for gz in (".gz", "")]
      names += [f"{prefix}-{kind}.idx{ndim}-ubyte{gz}" for gz in (".gz", "")]
      hit = [n for n in names if os.path.isfile(os.path.join(path, n))]
      if hit:
        files.append(os.path.join(path, hit[0]))
      else:
        missing.append(names[0])
    if len(files) == 2:
      out[split] = tuple(files)
  if missing:
    raise ValueError(f"IDX directory {path} lacks {', '.join(missing)} "
                     "(or the same names without .gz)")
  return out


@dataclasses.dataclass(eq=False)
class IdxConfig(tfds.core.BuilderConfig):
  """Which IDX directory a `RoarIdx` reads, and its class names."""
  path: str = ""
  class_names: tuple[str, ...] = ()


class RoarIdx(_OfflineBuilder):
  """MNIST-style IDX files: `train-*` and `t10k-*` images and labels."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _files(self):
    return find_idx_files(self.builder_config.path)

  def _info(self) -> tfds.core.DatasetInfo:
    files = self._files()
    shapes = set()
    for images, labels in files.values():
      dtype, shape = read_idx_header(images)
      if dtype != np.uint8 or len(shape) not in (3, 4):
        raise ValueError(f"{images}: expected uint8 images [N, H, W] or "
                         f"[N, H, W, C], got {dtype} {shape}")
      _, label_shape = read_idx_header(labels)
      if label_shape != shape[:1]:
        raise ValueError(f"{labels}: {label_shape} labels for {shape[0]} "
                         f"images in {images}")
      shapes.add(shape[1:] if len(shape) == 4 else shape[1:] + (1,))
    if len(shapes) != 1:
      raise ValueError(f"{self.builder_config.path}: splits have different "
                       f"image shapes {sorted(shapes)}")
    names = self.builder_config.class_names
    if names:
      label = tfds.features.ClassLabel(names=names)
    else:
      top = max(int(read_idx(l).max()) for _, l in files.values())
      label = tfds.features.ClassLabel(num_classes=top + 1)
    return self.dataset_info_from_configs(
        description=f"IDX dataset read from {self.builder_config.path}",
        features=tfds.features.FeaturesDict({
            # Raw bytes: no PNG round trip for 28x28 images.
            "image": tfds.features.Tensor(
                shape=shapes.pop(), dtype=np.uint8,
                encoding=tfds.features.Encoding.BYTES),
            "label": label,
            "index": tfds.features.Scalar(np.int64),
        }),
        supervised_keys=("image", "label"),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is local.
    return {split: self._generate_examples(*paths)
            for split, paths in self._files().items()}

  def _generate_examples(self, images_path: str, labels_path: str):
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim == 3:
      images = images[..., None]
    num_classes = self.info.features["label"].num_classes
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
      raise ValueError(f"{labels_path}: labels outside [0, {num_classes})")
    for i in range(len(images)):
      yield _order_key(i, len(images)), {
          "image": images[i], "label": int(labels[i]), "index": i}


def idx_config(path: str, class_names: Sequence[str] = ()) -> IdxConfig:
  """The builder config of an IDX directory (name keyed by the input)."""
  class_names = tuple(class_names)
  return IdxConfig(name=_config_name(path, "idx", class_names),
                   path=os.path.realpath(os.path.expanduser(path)),
                   class_names=class_names)


def prepare_idx(path: str, data_dir: str | None = None, *,
                class_names: Sequence[str] = ()) -> str:
  """Prepares an IDX directory once; returns the prepared directory.

  Args:
    path: directory with train-/t10k- images and labels IDX files (.gz or raw).
    data_dir: TFDS data_dir (default ~/tensorflow_datasets).
    class_names: label names; default the numbers 0..max label.

  Returns:
    The directory of the prepared dataset (for `tfds.builder_from_directory`).
  """
  if not os.path.exists(os.path.expanduser(path)):
    raise ValueError(f"IDX path {path} does not exist")
  find_idx_files(os.path.expanduser(path))  # Fail early, naming the files.
  return _prepare(RoarIdx, idx_config(path, class_names), data_dir)


def is_idx_dir(path: str) -> bool:
  """Whether `path` is a directory holding IDX image files."""
  return os.path.isdir(path) and any(
      "idx3-ubyte" in f for f in os.listdir(path))


# ----------------------------------------------------------------------------
# Toy


@dataclasses.dataclass(eq=False)
class ToyConfig(tfds.core.BuilderConfig):
  """The toy generator's parameters, as JSON (see synthetic.TOY_DEFAULTS)."""
  params_json: str = "{}"


class RoarToy(_OfflineBuilder):
  """The synthetic toy images with their ground-truth masks."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  @property
  def _params(self) -> dict[str, Any]:
    return json.loads(self.builder_config.params_json)

  def _info(self) -> tfds.core.DatasetInfo:
    p = self._params
    size = int(p["image_size"])
    return self.dataset_info_from_configs(
        description="Synthetic toy images: a class pattern on noise.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(
                shape=(size, size, 3), dtype=np.uint8,
                encoding=tfds.features.Encoding.BYTES),
            "label": tfds.features.ClassLabel(
                num_classes=int(p["num_classes"])),
            "index": tfds.features.Scalar(np.int64),
            "mask": tfds.features.Tensor(
                shape=(size, size), dtype=np.bool_,
                encoding=tfds.features.Encoding.BYTES),
        }),
        supervised_keys=("image", "label"),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split)
            for split in ("train", "test")}

  def _generate_examples(self, split: str):
    images, labels, masks = synthetic.make_toy_split(self._params, split)
    for i in range(len(images)):
      yield _order_key(i, len(images)), {
          "image": images[i], "label": int(labels[i]), "index": i,
          "mask": masks[i]}


def toy_config(toy: Mapping[str, Any] | None) -> ToyConfig:
  """The builder config of a toy dataset (name keyed by its parameters)."""
  params = synthetic.toy_params(toy)
  return ToyConfig(name=f"toy_{_input_fingerprint(params)}",
                   params_json=json.dumps(params, sort_keys=True))


def prepare_toy(toy: Mapping[str, Any] | None,
                data_dir: str | None = None) -> str:
  """Writes the configured toy dataset (once) as TFDS; returns its directory."""
  return _prepare(RoarToy, toy_config(toy), data_dir)
