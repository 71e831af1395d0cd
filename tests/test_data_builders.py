"""Offline TFDS builders: ImageFolder (.tar.gz and directory) and IDX files.

The fast tests use the small fixtures in tests/fixtures/ (made by
make_fixtures.py); the `shared_data` tests prepare the full CIFAR-10 JPEG
archive and Fashion-MNIST from ../shared/data once per module.
"""

import gzip
import os
import shutil
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from roar_jax.data import idx
from roar_jax.data import image_folder
from roar_jax.data import offline_builder
from roar_jax.data import sources

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
CIFAR_MINI = os.path.join(FIXTURES, "cifar10-mini.tar.gz")
FASHION_MINI = os.path.join(FIXTURES, "fashion-mnist-mini")
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog",
                 "frog", "horse", "ship", "truck")


def _read_all(source, split, **kwargs):
  batches = list(source.load(split, **kwargs).batch(4096).as_numpy_iterator())
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _raw_idx(path):
  """An IDX .gz file parsed independently of the builder."""
  with gzip.open(path, "rb") as f:
    raw = f.read()
  ndim = raw[3]
  dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
  return np.frombuffer(raw[4 + 4 * ndim:], np.uint8).reshape(dims)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def cifar_mini(data_dir):
  return sources.DirectorySource(
      image_folder.prepare_image_folder(CIFAR_MINI, data_dir))


@pytest.fixture(scope="module")
def cifar_mini_files():
  with tarfile.open(CIFAR_MINI, "r:gz") as tar:
    return {m.name: tar.extractfile(m).read()
            for m in tar.getmembers() if m.name.endswith(".jpg")}


# ------------------------------------------------------------- ImageFolder


def test_image_folder_fixture_counts_classes_and_types(cifar_mini):
  info = cifar_mini.info
  assert info.num_examples == {"train": 200, "test": 100}
  assert info.num_classes == 10 and info.class_names == CIFAR_CLASSES
  assert info.image_shape == (32, 32, 3)
  ex = _read_all(cifar_mini, "test")
  assert ex["image"].dtype == np.uint8 and ex["image"].shape == (100, 32, 32, 3)
  assert ex["label"].dtype == np.int64 and ex["index"].dtype == np.int64


def test_image_folder_order_is_sorted_class_by_class(cifar_mini,
                                                     cifar_mini_files):
  """Index i holds file i // 10 (sorted) of class i % 10: the classes in turn.

  The archive lists its members shuffled (see make_fixtures.py), so this also
  checks that the builder sorts them itself.
  """
  ex = _read_all(cifar_mini, "train")
  np.testing.assert_array_equal(ex["index"], np.arange(200))
  np.testing.assert_array_equal(ex["label"], np.arange(200) % 10)
  stored = cifar_mini.builder.as_dataset(split="train", shuffle_files=False)
  names = [e["file_name"].decode() for e in stored.as_numpy_iterator()]
  per_class = {c: sorted(n for n in cifar_mini_files
                         if n.startswith(f"train/{c}/")) for c in CIFAR_CLASSES}
  expected = [per_class[CIFAR_CLASSES[i % 10]][i // 10] for i in range(200)]
  assert names == expected
  # The pixels are those of the original JPEG files, decoded by TF.
  for i in (0, 57, 199):
    np.testing.assert_array_equal(
        ex["image"][i], tf.io.decode_jpeg(cifar_mini_files[names[i]]).numpy())


def test_image_folder_reads_are_deterministic_and_sliced(cifar_mini):
  whole = _read_all(cifar_mini, "test")
  again = _read_all(cifar_mini, "test")
  np.testing.assert_array_equal(whole["image"], again["image"])
  parts = [_read_all(cifar_mini, "test", process_index=p, process_count=3)
           for p in range(3)]
  # Contiguous even slices 34 + 33 + 33 with global indices.
  assert [len(p["index"]) for p in parts] == [34, 33, 33]
  for key in ("image", "label", "index"):
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]),
                                  whole[key])


def test_image_folder_directory_equals_archive(cifar_mini, data_dir,
                                               tmp_path):
  root = tmp_path / "extracted"
  with tarfile.open(CIFAR_MINI, "r:gz") as tar:
    tar.extractall(root / "cifar", filter="data")  # With a root folder.
  from_dir = sources.DirectorySource(
      image_folder.prepare_image_folder(str(root), data_dir))
  assert from_dir.info == cifar_mini.info
  for split in ("train", "test"):
    a, b = _read_all(from_dir, split), _read_all(cifar_mini, split)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_image_folder_is_prepared_once_and_keyed_by_content(data_dir,
                                                             tmp_path):
  os.makedirs(tmp_path / "elsewhere")  # The readable stem is the file name.
  copy = str(tmp_path / "elsewhere" / os.path.basename(CIFAR_MINI))
  shutil.copy(CIFAR_MINI, copy)
  first = image_folder.prepare_image_folder(copy, data_dir)
  stamp = os.path.getmtime(os.path.join(first, "dataset_info.json"))
  assert image_folder.prepare_image_folder(copy, data_dir) == first
  assert os.path.getmtime(os.path.join(first, "dataset_info.json")) == stamp
  # An archive's copy (another path, another modification time) is the same
  # dataset, prepared once; one changed byte makes another.
  os.utime(copy, ns=(0, 0))
  assert image_folder.prepare_image_folder(CIFAR_MINI, data_dir) == first
  assert offline_builder.content_fingerprint(copy) == (
      offline_builder.content_fingerprint(CIFAR_MINI))
  with open(copy, "r+b") as f:
    f.seek(100)
    byte = f.read(1)
    f.seek(100)
    f.write(bytes([byte[0] ^ 1]))
  assert offline_builder.content_fingerprint(copy) != (
      offline_builder.content_fingerprint(CIFAR_MINI))


def test_large_file_fingerprint_samples_its_blocks(tmp_path, monkeypatch):
  monkeypatch.setattr(offline_builder, "_WHOLE_BYTES", 1000)
  monkeypatch.setattr(offline_builder, "_BLOCKS", 4)
  monkeypatch.setattr(offline_builder, "_BLOCK_BYTES", 10)
  path = tmp_path / "big.bin"
  data = bytearray(range(256)) * 8  # 2,048 bytes: blocks at 0, 679, ...
  path.write_bytes(bytes(data))
  before = offline_builder.content_fingerprint(str(path))
  data[679] ^= 1  # Inside the second block.
  path.write_bytes(bytes(data))
  assert offline_builder.content_fingerprint(str(path)) != before
  data[679] ^= 1
  data[500] ^= 1  # Between blocks: the sampled hash cannot see it.
  path.write_bytes(bytes(data))
  assert offline_builder.content_fingerprint(str(path)) == before
  path.write_bytes(bytes(data[:-1]))  # The size is always in it.
  assert offline_builder.content_fingerprint(str(path)) != before


def test_non_rgb_images_are_converted(data_dir, tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  root = tmp_path / "gray"
  rng = np.random.default_rng(0)
  pixels = {}
  for split in ("train", "test"):
    for cls in ("a", "b"):
      os.makedirs(root / split / cls)
      for i in range(2):
        gray = rng.integers(0, 256, (5, 7), dtype=np.uint8)
        Image.fromarray(gray, "L").save(root / split / cls / f"{i}.png")
        pixels[f"{split}/{cls}/{i}.png"] = gray
  src = sources.DirectorySource(
      image_folder.prepare_image_folder(str(root), data_dir))
  assert src.info.image_shape == (5, 7, 3)
  ex = _read_all(src, "train")
  # Round robin: a/0, b/0, a/1, b/1; gray copied into all three channels.
  for i, name in enumerate(["train/a/0.png", "train/b/0.png",
                            "train/a/1.png", "train/b/1.png"]):
    np.testing.assert_array_equal(ex["image"][i],
                                  np.repeat(pixels[name][..., None], 3, -1))


def test_image_folder_errors_name_the_path(tmp_path, data_dir):
  missing = str(tmp_path / "nope.tar.gz")
  with pytest.raises(ValueError, match="nope.tar.gz does not exist"):
    image_folder.prepare_image_folder(missing, data_dir)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ValueError, match=f"{empty}: no .jpg"):
    image_folder.prepare_image_folder(str(empty), data_dir)
  flat = tmp_path / "flat" / "train"
  flat.mkdir(parents=True)
  (flat / "x.jpg").write_bytes(b"\xff\xd8 not really")
  with pytest.raises(ValueError, match="train/x.jpg: image outside"):
    image_folder.prepare_image_folder(str(tmp_path / "flat"), data_dir)
  bad = tmp_path / "bad" / "train" / "cat"
  bad.mkdir(parents=True)
  (bad / "0.jpg").write_bytes(b"garbage")
  with pytest.raises(ValueError, match="train/cat/0.jpg: not a readable"):
    image_folder.prepare_image_folder(str(tmp_path / "bad"), data_dir)
  broken = tmp_path / "broken.tar.gz"
  broken.write_bytes(open(CIFAR_MINI, "rb").read()[:5000])
  with pytest.raises(ValueError, match="broken.tar.gz: cannot read"):
    image_folder.prepare_image_folder(str(broken), data_dir)


# --------------------------------------------------------------------- IDX


def test_idx_fixture_matches_the_files(data_dir):
  src = sources.DirectorySource(idx.prepare_idx(
      FASHION_MINI, data_dir, class_names=idx.FASHION_MNIST_CLASSES))
  assert src.info.num_examples == {"train": 150, "test": 50}
  assert src.info.image_shape == (28, 28, 1) and src.info.num_classes == 10
  assert src.info.class_names[0] == "T-shirt/top"
  for split, prefix in (("train", "train"), ("test", "t10k")):
    ex = _read_all(src, split)
    images = _raw_idx(os.path.join(FASHION_MINI,
                                   f"{prefix}-images-idx3-ubyte.gz"))
    labels = _raw_idx(os.path.join(FASHION_MINI,
                                   f"{prefix}-labels-idx1-ubyte.gz"))
    np.testing.assert_array_equal(ex["image"][..., 0], images)
    np.testing.assert_array_equal(ex["label"], labels)
    np.testing.assert_array_equal(ex["index"], np.arange(len(labels)))


def test_idx_reads_raw_files_and_checks_them(tmp_path, data_dir):
  raw = tmp_path / "raw"
  raw.mkdir()
  for name in os.listdir(FASHION_MINI):
    with gzip.open(os.path.join(FASHION_MINI, name), "rb") as f:
      (raw / name.removesuffix(".gz")).write_bytes(f.read())
  np.testing.assert_array_equal(
      idx.read_idx(str(raw / "t10k-images-idx3-ubyte")),
      _raw_idx(os.path.join(FASHION_MINI, "t10k-images-idx3-ubyte.gz")))
  src = sources.DirectorySource(idx.prepare_idx(str(raw), data_dir))
  assert src.info.num_examples == {"train": 150, "test": 50}
  assert src.info.class_names[:2] == ("0", "1")  # No names given.
  # A truncated file, a wrong magic number, a missing file.
  data = (raw / "t10k-labels-idx1-ubyte").read_bytes()
  (raw / "t10k-labels-idx1-ubyte").write_bytes(data[:-3])
  with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte: IDX data has"):
    idx.read_idx(str(raw / "t10k-labels-idx1-ubyte"))
  (raw / "t10k-labels-idx1-ubyte").write_bytes(b"\x01\x02" + data[2:])
  with pytest.raises(ValueError, match="not an IDX file"):
    idx.read_idx(str(raw / "t10k-labels-idx1-ubyte"))
  os.remove(raw / "t10k-labels-idx1-ubyte")
  with pytest.raises(ValueError, match=f"{raw} lacks t10k-labels-idx1-ubyte"):
    idx.prepare_idx(str(raw), data_dir)


# ------------------------------------------------- full data (../shared/data)


@pytest.fixture(scope="module")
def full_cifar(shared_data, data_dir):
  return sources.DirectorySource(image_folder.prepare_image_folder(
      str(shared_data / "cifar10-jpeg.tar.gz"), data_dir))


def _labels_and_indices(source, split, **kwargs):
  ds = source.load(split, **kwargs).map(lambda e: (e["label"], e["index"]))
  out = list(ds.batch(5000).as_numpy_iterator())
  return (np.concatenate([b[0] for b in out]),
          np.concatenate([b[1] for b in out]))


def test_full_cifar10_jpeg_archive(full_cifar, shared_data):
  info = full_cifar.info
  assert info.num_examples == {"train": 50000, "test": 10000}
  assert info.num_classes == 10 and info.class_names == CIFAR_CLASSES
  assert info.image_shape == (32, 32, 3)
  # 5,000 / 1,000 images per class, the classes in turn: label = index % 10,
  # checked on the last quarter of the test split and on the train slice of
  # the last of 20 processes.
  labels, indices = _labels_and_indices(full_cifar, "test", process_index=3,
                                        process_count=4)
  np.testing.assert_array_equal(indices, np.arange(7500, 10000))
  np.testing.assert_array_equal(labels, indices % 10)
  labels, indices = _labels_and_indices(full_cifar, "train", process_index=19,
                                        process_count=20)
  np.testing.assert_array_equal(indices, np.arange(47500, 50000))
  np.testing.assert_array_equal(labels, indices % 10)
  # A slice starts where it should, with the pixels of the right file.
  first = next(iter(full_cifar.load("test", process_index=7, process_count=8)
                    .as_numpy_iterator()))
  assert first["index"] == 8750 and first["label"] == 0
  with tarfile.open(shared_data / "cifar10-jpeg.tar.gz", "r:gz") as tar:
    jpeg = tar.extractfile("test/airplane/0875.jpg").read()
  assert first["image"].dtype == np.uint8
  np.testing.assert_array_equal(first["image"], tf.io.decode_jpeg(jpeg).numpy())


def test_full_fashion_mnist(shared_data, data_dir):
  path = str(shared_data / "fashion-mnist")
  src = sources.DirectorySource(idx.prepare_idx(
      path, data_dir, class_names=idx.FASHION_MNIST_CLASSES))
  assert src.info.num_examples == {"train": 60000, "test": 10000}
  assert src.info.image_shape == (28, 28, 1)
  for split, prefix, count in (("train", "train", 8), ("test", "t10k", 1)):
    raw_images = _raw_idx(os.path.join(path,
                                       f"{prefix}-images-idx3-ubyte.gz"))
    raw_labels = _raw_idx(os.path.join(path,
                                       f"{prefix}-labels-idx1-ubyte.gz"))
    n = len(raw_labels)
    assert n == src.info.num_examples[split]
    # The whole test split; the last eighth of the training split.
    ex = _read_all(src, split, process_index=count - 1, process_count=count)
    lo = n - n // count
    assert ex["image"].shape == (n // count, 28, 28, 1)
    assert ex["image"].dtype == np.uint8
    np.testing.assert_array_equal(ex["index"], np.arange(lo, n))
    np.testing.assert_array_equal(ex["label"], raw_labels[lo:])
    np.testing.assert_array_equal(ex["image"][..., 0], raw_images[lo:])
