"""Prepared datasets keyed on content; user-caused data failures in one line.

Tiny fixtures made in tmp_path (8x8 JPEGs and PNGs), so every test is fast.
"""

import gzip
import io
import os
import shutil
import struct
import tarfile
import time

import numpy as np
import PIL.Image
import pytest

from conftest import data_config

import roar_jax.data
from roar_jax.data import idx
from roar_jax.data import image_folder
from roar_jax.data import sources
from roar_jax.data.errors import DataError

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
FASHION_MINI = os.path.join(FIXTURES, "fashion-mnist-mini")




def _encoded(value: int, fmt: str = "JPEG", size: int = 8) -> bytes:
  rng = np.random.default_rng(value)
  pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
  out = io.BytesIO()
  PIL.Image.fromarray(pixels).save(out, format=fmt)
  return out.getvalue()


def _make_folder(root, counts) -> str:
  """An ImageFolder: counts = {split: {class: number of images}}."""
  value = 0
  for split, classes in counts.items():
    for cls, n in classes.items():
      os.makedirs(os.path.join(root, split, cls), exist_ok=True)
      for i in range(n):
        value += 1
        fmt, ext = ("PNG", "png") if value % 2 else ("JPEG", "jpg")
        with open(os.path.join(root, split, cls, f"{i:03d}.{ext}"), "wb") as f:
          f.write(_encoded(value, fmt))
  return str(root)


def _one_line(error) -> str:
  message = str(error.value)
  assert "\n" not in message, message
  assert isinstance(error.value, DataError)
  return message


def test_data_error_is_exported_and_a_value_error():
  assert roar_jax.data.DataError is DataError
  assert issubclass(DataError, ValueError)


# ------------------------------------------------- prepared copies by content


def test_changed_folder_is_prepared_again(tmp_path):
  root = _make_folder(tmp_path / "pets", {"train": {"cat": 3, "dog": 3},
                                          "test": {"cat": 1, "dog": 1}})
  config = data_config(name="cifar10", path=root,
                        data_dir=str(tmp_path / "tfds"))
  before = sources.get_source(config)
  assert before.info.num_examples == {"train": 6, "test": 2}
  assert before.info.class_names == ("cat", "dog")
  first = before.builder.data_dir
  # Unchanged: found again, not prepared again.
  assert sources.get_source(config).builder.data_dir == first
  # Four more images and a new class.
  _make_folder(tmp_path / "extra", {"train": {"cat": 4, "emu": 2},
                                    "test": {"emu": 1}})
  for split, cls, name in [("train", "cat", f"{i:03d}") for i in range(4)] + [
      ("train", "emu", "000"), ("train", "emu", "001"), ("test", "emu", "000")]:
    src_dir = tmp_path / "extra" / split / cls
    for f in os.listdir(src_dir):
      if f.startswith(name):
        os.makedirs(os.path.join(root, split, cls), exist_ok=True)
        shutil.copy(src_dir / f, os.path.join(root, split, cls, "new" + f))
  after = sources.get_source(config)
  assert after.info.num_examples == {"train": 12, "test": 3}
  assert after.info.class_names == ("cat", "dog", "emu")
  assert after.info.num_classes == 3
  assert after.builder.data_dir != first
  assert os.path.exists(os.path.join(first, "dataset_info.json"))  # Kept.
  labels = [int(e["label"]) for e in after.load("train").as_numpy_iterator()]
  assert sorted(labels) == [0] * 7 + [1] * 3 + [2] * 2


def test_file_rewritten_in_place_is_prepared_again(tmp_path):
  root = _make_folder(tmp_path / "f", {"train": {"a": 1, "b": 1},
                                       "test": {"a": 1, "b": 1}})
  data_dir = str(tmp_path / "tfds")
  first = image_folder.prepare_image_folder(root, data_dir)
  target = os.path.join(root, "train", "a", "000.png")
  with open(target, "wb") as f:
    f.write(_encoded(99, "PNG", size=9))  # Same name, other size.
  second = image_folder.prepare_image_folder(root, data_dir)
  assert second != first
  src = sources.DirectorySource(second)
  assert src.info.image_shape == (None, None, 3)  # 8x8 and 9x9 now.


def test_idx_directory_is_keyed_on_its_files(tmp_path):
  raw = tmp_path / "idx"
  shutil.copytree(FASHION_MINI, raw)
  data_dir = str(tmp_path / "tfds")
  first = idx.prepare_idx(str(raw), data_dir)
  assert idx.prepare_idx(str(raw), data_dir) == first
  os.utime(raw / "t10k-labels-idx1-ubyte.gz", ns=(1, 1))
  assert idx.prepare_idx(str(raw), data_dir) != first


# ----------------------------------------------------------- corrupt images


def test_truncated_jpeg_is_named_while_preparing(tmp_path):
  root = _make_folder(tmp_path / "cut", {"train": {"a": 3, "b": 3},
                                         "test": {"a": 1, "b": 1}})
  bad = os.path.join(root, "train", "b", "002.jpg")
  data = _encoded(7, "JPEG", size=32)
  with open(bad, "wb") as f:
    f.write(data[:len(data) // 2])  # The header is intact: listing passes.
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(DataError) as e:
    image_folder.prepare_image_folder(root, data_dir)
  message = _one_line(e)
  assert message.startswith(f"{bad}: corrupt or truncated image"), message
  # Nothing prepared; once the file is fixed, the folder prepares.
  assert not any(f == "dataset_info.json" for _, _, files in os.walk(data_dir)
                 for f in files)
  with open(bad, "wb") as f:
    f.write(data)
  src = sources.DirectorySource(image_folder.prepare_image_folder(root,
                                                                  data_dir))
  assert src.info.num_examples == {"train": 6, "test": 2}


def test_truncated_png_and_archive_member_are_named(tmp_path):
  root = _make_folder(tmp_path / "png", {"train": {"a": 2, "b": 2},
                                         "test": {"a": 1, "b": 1}})
  bad = os.path.join(root, "test", "a", "000.png")
  with open(bad, "rb") as f:
    data = f.read()
  with open(bad, "wb") as f:
    f.write(data[:-12])  # Only the end chunk missing: PIL would accept it.
  archive = str(tmp_path / "png.tar.gz")
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(root, arcname="png")
  with pytest.raises(DataError) as e:
    image_folder.prepare_image_folder(archive, str(tmp_path / "tfds"))
  message = _one_line(e)
  assert message.startswith(f"{archive}, member png/test/a/000.png: corrupt "
                            "or truncated image"), message


def test_truncated_archive_is_named(tmp_path):
  root = _make_folder(tmp_path / "src", {"train": {"a": 20, "b": 20},
                                         "test": {"a": 2, "b": 2}})
  archive = tmp_path / "data.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(root, arcname=".")
  data = archive.read_bytes()
  archive.write_bytes(data[:len(data) * 2 // 3])
  with pytest.raises(DataError) as e:
    sources.get_source(data_config(name="cifar10", path=str(archive),
                                    data_dir=str(tmp_path / "tfds")))
  message = _one_line(e)
  assert message.startswith(f"{archive}: cannot read the archive after member")
  assert "truncated or corrupt" in message


# ---------------------------------------------------------- layout problems


def test_one_class_and_no_test_split_are_refused_naming_the_path(tmp_path):
  one = _make_folder(tmp_path / "one", {"train": {"cat": 2},
                                        "test": {"cat": 1}})
  with pytest.raises(DataError) as e:
    sources.get_source(data_config(name="cifar10", path=one,
                                    data_dir=str(tmp_path / "tfds")))
  assert _one_line(e) == (f"config.data.path: {one} has 1 class ['cat']; a "
                          "classification benchmark needs at least 2")
  no_test = _make_folder(tmp_path / "notest", {"train": {"a": 2, "b": 2}})
  with pytest.raises(DataError) as e:
    sources.get_source(data_config(name="cifar10", path=no_test,
                                    data_dir=str(tmp_path / "tfds")))
  assert _one_line(e).startswith(f"config.data.path: {no_test} has no 'test' "
                                 "split (found ['train'])")


def test_non_images_are_skipped_or_refused_by_name(tmp_path):
  root = _make_folder(tmp_path / "mixed", {"train": {"a": 2, "b": 2},
                                           "test": {"a": 1, "b": 1}})
  for name in ("README", "train/.DS_Store", "train/a/notes.txt",
               "train/b/._000.png", "LICENSE.md",
               "train/a/.ipynb_checkpoints/000.png"):
    os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
    with open(os.path.join(root, name), "w") as f:
      f.write("not an image")
  src = sources.DirectorySource(image_folder.prepare_image_folder(
      root, str(tmp_path / "tfds")))
  assert src.info.num_examples == {"train": 4, "test": 2}
  stray = os.path.join(root, "train", "a", "scan.heic")
  with open(stray, "wb") as f:
    f.write(b"\x00\x00\x00\x18ftypheic")
  with pytest.raises(DataError) as e:
    image_folder.prepare_image_folder(root, str(tmp_path / "tfds"))
  assert _one_line(e).startswith(f"{stray}: not an image file")


@pytest.mark.parametrize("layout, expected", [
    ({}, "{root}: no .jpg/.jpeg/.png images found"),
    ({"train/x.jpg": 1}, "{root}/train/x.jpg: image outside the "
                         "<split>/<class>/ layout"),
    ({"cat/x.png": 1}, "{root}/cat/x.png: image outside"),
    ({"train/a/x.jpg": b"garbage"}, "{root}/train/a/x.jpg: not a readable "
                                    "image"),
])
def test_layout_errors_are_one_line_naming_the_file(tmp_path, layout,
                                                    expected):
  root = tmp_path / "root"
  root.mkdir()
  for name, content in layout.items():
    os.makedirs(os.path.dirname(root / name), exist_ok=True)
    (root / name).write_bytes(content if isinstance(content, bytes) else
                              _encoded(content))
  with pytest.raises(DataError) as e:
    sources.get_source(data_config(name="cifar10", path=str(root),
                                    data_dir=str(tmp_path / "tfds")))
  assert _one_line(e).startswith(expected.format(root=root))


def test_damaged_prepared_copy_is_named(tmp_path):
  root = _make_folder(tmp_path / "ok", {"train": {"a": 1, "b": 1},
                                        "test": {"a": 1, "b": 1}})
  prepared = image_folder.prepare_image_folder(root, str(tmp_path / "tfds"))
  with open(os.path.join(prepared, "dataset_info.json"), "w") as f:
    f.write("{ not json")
  with pytest.raises(DataError) as e:
    sources.get_source(data_config(name="cifar10", path=root,
                                    data_dir=str(tmp_path / "tfds")))
  assert _one_line(e).startswith(f"{prepared}: cannot read the prepared "
                                 "dataset")


# --------------------------------------------------------------------- IDX


def _idx_copy(tmp_path) -> str:
  raw = tmp_path / "idx"
  raw.mkdir()
  for name in os.listdir(FASHION_MINI):
    with gzip.open(os.path.join(FASHION_MINI, name), "rb") as f:
      (raw / name.removesuffix(".gz")).write_bytes(f.read())
  return str(raw)


@pytest.mark.parametrize("damage, expected", [
    (lambda d: b"\x08\x00" + d[2:], "not an IDX file (bad magic number"),
    (lambda d: d[:-100], "IDX data has"),
    (lambda d: d[:6], "IDX header truncated"),
])
def test_bad_idx_files_are_named(tmp_path, damage, expected):
  raw = _idx_copy(tmp_path)
  target = os.path.join(raw, "train-images-idx3-ubyte")
  with open(target, "rb") as f:
    data = f.read()
  with open(target, "wb") as f:
    f.write(damage(data))
  with pytest.raises(DataError) as e:
    sources.get_source(data_config(name="fashion_mnist", path=raw,
                                    data_dir=str(tmp_path / "tfds")))
  message = _one_line(e)
  assert message.startswith(f"{target}: {expected}"), message


def test_idx_label_count_and_truncated_gzip_are_named(tmp_path):
  raw = _idx_copy(tmp_path)
  labels = os.path.join(raw, "t10k-labels-idx1-ubyte")
  with open(labels, "rb") as f:
    data = f.read()
  with open(labels, "wb") as f:  # 49 labels for 50 images.
    f.write(data[:4] + struct.pack(">I", 49) + data[8:-1])
  with pytest.raises(DataError) as e:
    idx.prepare_idx(raw, str(tmp_path / "tfds"))
  assert _one_line(e).startswith(f"{labels}: (49,) labels for 50 images")
  gz = tmp_path / "gz"
  shutil.copytree(FASHION_MINI, gz)
  cut = gz / "train-labels-idx1-ubyte.gz"
  cut.write_bytes(cut.read_bytes()[:40])
  with pytest.raises(DataError) as e:
    idx.read_idx(str(cut))
  assert _one_line(e).startswith(f"{cut}: cannot read the IDX file")


# ----------------------------------------------------- TFDS without network


def test_tfds_name_without_network_fails_at_once(tmp_path, monkeypatch):
  probed = []

  def unreachable(host, port, timeout):
    probed.append((host, port))
    return "Name or service not known"

  monkeypatch.setattr(sources, "_unreachable", unreachable)
  monkeypatch.setattr(
      sources.tfds.core.DatasetBuilder, "download_and_prepare",
      lambda *a, **k: pytest.fail("download attempted"))
  data_dir = str(tmp_path / "fresh")
  start = time.monotonic()
  with pytest.raises(DataError) as e:
    sources.get_source(data_config(name="cifar10", data_dir=data_dir))
  assert time.monotonic() - start < 5
  message = _one_line(e)
  assert probed == [("www.cs.toronto.edu", 443)]
  assert message.startswith("config.data.name='cifar10' is not prepared in "
                            f"{data_dir}/cifar10/")
  for alternative in ("--config.data.path=", "--config.data.manual_dir=",
                      "--config.data.data_dir="):
    assert alternative in message


def test_network_probe_answers_quickly(tmp_path):
  import socket  # pylint: disable=g-import-not-at-top
  server = socket.socket()
  server.bind(("127.0.0.1", 0))
  server.listen(1)
  port = server.getsockname()[1]
  try:
    assert sources._unreachable("127.0.0.1", port, 2.0) is None
  finally:
    server.close()
  start = time.monotonic()
  reason = sources._unreachable("127.0.0.1", port, 2.0)  # Closed now.
  assert reason and time.monotonic() - start < 2.5
  start = time.monotonic()
  assert sources._unreachable("no-such-host.invalid", 80, 1.0)
  assert time.monotonic() - start < 1.5
