"""`RoarIdx`: MNIST-style IDX files as TFDS, and the IDX reader.

A directory of IDX files (MNIST / Fashion-MNIST: `train-images-idx3-ubyte[.gz]`,
`train-labels-idx1-ubyte[.gz]`, `t10k-images-idx3-ubyte[.gz]`,
`t10k-labels-idx1-ubyte[.gz]`) becomes the splits 'train' and 'test', in file
order, `index` = the position in the file. A wrong magic number, a truncated
file, a label count that differs from the image count and labels outside the
classes fail with one line naming the file.
"""

import dataclasses
import gzip
import os
import zlib
from typing import Sequence

import numpy as np
import tensorflow_datasets as tfds

from roar_jax.data import offline_builder
from roar_jax.data.errors import DataError, first_line

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(i) for i in range(10))

# IDX file name prefixes per split, as distributed with MNIST/Fashion-MNIST.
_IDX_PREFIXES = {"train": "train", "test": "t10k"}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"),
               0x0E: np.dtype(">f8")}
# What reading a damaged (possibly gzipped) file raises.
_READ_ERRORS = (OSError, EOFError, zlib.error)


def _open_idx(path: str):
  with open(path, "rb") as f:
    gzipped = f.read(2) == b"\x1f\x8b"
  return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _read_error(path: str, e: Exception) -> DataError:
  return DataError(f"{path}: cannot read the IDX file ({first_line(e)}); it "
                   "is truncated or corrupt")


def read_idx_header(path: str) -> tuple[np.dtype, tuple[int, ...]]:
  """(dtype, shape) of an IDX file (.gz or raw) from its header."""
  try:
    with _open_idx(path) as f:
      head = f.read(4)
      if len(head) < 4 or head[0] != 0 or head[1] != 0 or (
          head[2] not in _IDX_DTYPES) or head[3] == 0:
        raise DataError(f"{path}: not an IDX file (bad magic number "
                        f"{head.hex()})")
      raw_dims = f.read(4 * head[3])
  except _READ_ERRORS as e:
    raise _read_error(path, e) from None
  if len(raw_dims) < 4 * head[3]:
    raise DataError(f"{path}: IDX header truncated")
  shape = tuple(int(x) for x in np.frombuffer(raw_dims, dtype=">u4"))
  return np.dtype(_IDX_DTYPES[head[2]]), shape


def _magic(dtype: np.dtype, shape: tuple[int, ...]) -> str:
  """The 4-byte magic number, in hex, of a header that reads as dtype and
  shape."""
  code = next(c for c, d in _IDX_DTYPES.items() if np.dtype(d) == dtype)
  return bytes([0, 0, code, len(shape)]).hex()


def read_idx(path: str) -> np.ndarray:
  """The array an IDX file (.gz or raw) holds, checked against its header."""
  dtype, shape = read_idx_header(path)
  try:
    with _open_idx(path) as f:
      f.read(4 + 4 * len(shape))
      data = f.read()
  except _READ_ERRORS as e:
    raise _read_error(path, e) from None
  expected = int(np.prod(shape)) * dtype.itemsize
  if len(data) != expected:
    raise DataError(f"{path}: IDX data has {len(data)} bytes, the header "
                    f"{shape} needs {expected}")
  return np.frombuffer(data, dtype=dtype).reshape(shape).astype(
      dtype.newbyteorder("="))


def find_idx_files(path: str) -> dict[str, tuple[str, str]]:
  """split -> (images file, labels file) of an IDX directory.

  Raises:
    DataError: naming the directory and the files that are missing.
  """
  if not os.path.isdir(path):
    raise DataError(f"IDX path {path} is not a directory")
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
    raise DataError(f"IDX directory {path} lacks {', '.join(missing)} "
                    "(or the same names without .gz)")
  return out


def _image_shape(files: dict[str, tuple[str, str]], path: str
                 ) -> tuple[int, ...]:
  """The common [H, W, C] of the splits' images, labels checked to match."""
  shapes = set()
  for images, labels in files.values():
    dtype, shape = read_idx_header(images)
    if dtype != np.uint8 or len(shape) not in (3, 4):
      raise DataError(f"{images}: bad magic number {_magic(dtype, shape)} "
                      "for images (expected 00000803 or 00000804: uint8 "
                      f"[N, H, W] or [N, H, W, C]; the header says {dtype} "
                      f"{shape})")
    label_dtype, label_shape = read_idx_header(labels)
    if len(label_shape) != 1:
      raise DataError(f"{labels}: bad magic number "
                      f"{_magic(label_dtype, label_shape)} for labels "
                      f"(expected 1 dimension, 00000801; the header says "
                      f"{label_shape})")
    if label_shape != shape[:1]:
      raise DataError(f"{labels}: {label_shape} labels for {shape[0]} "
                      f"images in {images}")
    shapes.add(shape[1:] if len(shape) == 4 else shape[1:] + (1,))
  if len(shapes) != 1:
    raise DataError(f"{path}: splits have different image shapes "
                    f"{sorted(shapes)}")
  return shapes.pop()


@dataclasses.dataclass(eq=False)
class IdxConfig(tfds.core.BuilderConfig):
  """Which IDX directory a `RoarIdx` reads, and its class names."""
  path: str = ""
  class_names: tuple[str, ...] = ()


class RoarIdx(offline_builder.OfflineBuilder):
  """MNIST-style IDX files: `train-*` and `t10k-*` images and labels."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _files(self):
    return find_idx_files(self.builder_config.path)

  def _info(self) -> tfds.core.DatasetInfo:
    files = self._files()
    shape = _image_shape(files, self.builder_config.path)
    names = self.builder_config.class_names
    if names:
      label = tfds.features.ClassLabel(names=names)
    else:
      top = max(int(read_idx(l).max(initial=0)) for _, l in files.values())
      label = tfds.features.ClassLabel(num_classes=top + 1)
    return self.dataset_info_from_configs(
        description=f"IDX dataset read from {self.builder_config.path}",
        features=tfds.features.FeaturesDict({
            # Raw bytes: no PNG round trip for 28x28 images.
            "image": tfds.features.Tensor(
                shape=shape, dtype=np.uint8,
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
      raise DataError(f"{labels_path}: labels outside [0, {num_classes})")
    for i in range(len(images)):
      yield offline_builder.order_key(i, len(images)), {
          "image": images[i], "label": int(labels[i]), "index": i}


def idx_config(path: str, class_names: Sequence[str] = ()) -> IdxConfig:
  """The builder config of an IDX directory (name keyed by its content)."""
  class_names = tuple(class_names)
  return IdxConfig(name=offline_builder.config_name(path, "idx", class_names),
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

  Raises:
    DataError: one line naming the directory or the file that is unusable.
  """
  if not os.path.exists(os.path.expanduser(path)):
    raise DataError(f"IDX path {path} does not exist")
  find_idx_files(os.path.expanduser(path))  # Fail early, naming the files.
  return offline_builder.prepare(RoarIdx, idx_config(path, class_names),
                                 data_dir)


def is_idx_dir(path: str) -> bool:
  """Whether `path` is a directory holding IDX image files."""
  return os.path.isdir(path) and any(
      "idx3-ubyte" in f for f in os.listdir(path))
