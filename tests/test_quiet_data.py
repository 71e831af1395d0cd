"""Preparing and reading local data says one line, not TFDS's or libjpeg's.

Tiny fixtures made in tmp_path (8x8 JPEGs), so every test is fast.
"""

import io
import logging as pylogging
import os
import sys

import numpy as np
import PIL.Image
import pytest
from absl import logging

from roar_jax.data import idx
from roar_jax.data import image_files
from roar_jax.data import image_folder
from roar_jax.data import sources
from roar_jax.data.errors import DataError

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def _jpeg(value: int, size: int = 8) -> bytes:
  pixels = np.random.default_rng(value).integers(0, 256, (size, size, 3),
                                                 dtype=np.uint8)
  out = io.BytesIO()
  PIL.Image.fromarray(pixels).save(out, format="JPEG")
  return out.getvalue()


def _folder(root) -> str:
  """train/{a,b}/ with 2 JPEGs each, test/{a,b}/ with 1."""
  value = 0
  for split, n in (("train", 2), ("test", 1)):
    for cls in ("a", "b"):
      os.makedirs(os.path.join(root, split, cls))
      for i in range(n):
        value += 1
        with open(os.path.join(root, split, cls, f"{i}.jpg"), "wb") as f:
          f.write(_jpeg(value))
  return str(root)


class _Stderr(pylogging.StreamHandler):
  """Writes to whatever sys.stderr is at the time (capfd replaces it)."""

  @property
  def stream(self):
    return sys.stderr

  @stream.setter
  def stream(self, value):
    del value


@pytest.fixture
def absl_to_stderr():
  """absl's INFO lines on stderr, as `roar_jax.main` shows them."""
  handler = _Stderr()
  logger = logging.get_absl_logger()
  before = logging.get_verbosity()
  logging.set_verbosity(logging.INFO)
  logger.addHandler(handler)
  yield
  logger.removeHandler(handler)
  logging.set_verbosity(before)


def test_preparing_a_folder_says_one_line_not_the_tfds_banner(
    tmp_path, capfd, absl_to_stderr):
  root = _folder(tmp_path / "pets")
  config = image_folder.image_folder_config(root)
  prepared = image_folder.prepare_image_folder(root, str(tmp_path / "tfds"))
  out, err = capfd.readouterr()
  assert "Downloading and preparing" not in out + err
  assert "downloaded and prepared" not in out + err
  assert "Using custom data configuration" not in out + err
  assert "splits..." not in err  # TFDS's bars: no terminal here.
  assert config.name.startswith("pets_")
  assert (f"preparing {config.name} from {os.path.realpath(root)} (once; "
          f"stored in {prepared})") in err
  assert f"prepared {config.name} in " in err
  # Prepared once: a second call finds it and says nothing.
  assert image_folder.prepare_image_folder(root, str(tmp_path / "tfds")) == (
      prepared)
  out, err = capfd.readouterr()
  assert "preparing" not in out + err


def test_a_truncated_jpeg_is_one_line_without_libjpeg_on_stderr(
    tmp_path, capfd):
  root = _folder(tmp_path / "cut")
  bad = os.path.join(root, "train", "b", "1.jpg")
  data = _jpeg(99, size=32)
  with open(bad, "wb") as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(DataError) as e:
    image_folder.prepare_image_folder(root, str(tmp_path / "tfds"))
  assert str(e.value).startswith(f"{bad}: corrupt or truncated image")
  out, err = capfd.readouterr()
  assert "JPEG" not in out + err, err  # libjpeg's "Improper call to JPEG..."
  assert "rendezvous" not in err, err


def test_what_a_good_decode_writes_to_stderr_is_passed_on(capfd):
  def noisy(data):
    os.write(2, b"native line\n")
    return data

  assert image_files._quiet_decode(noisy, b"") is None  # pylint: disable=protected-access
  assert capfd.readouterr().err == "native line\n"


def test_reading_bytes_encoded_images_warns_of_no_deprecated_dtype(
    tmp_path, caplog):
  src = sources.DirectorySource(idx.prepare_idx(
      os.path.join(FIXTURES, "fashion-mnist-mini"), str(tmp_path / "tfds")))
  with caplog.at_level(pylogging.WARNING):
    batch = next(src.load("test").batch(4).as_numpy_iterator())
    # The notice itself, as TFDS logs it, is dropped; others are not.
    logging.warning("`FeatureConnector.dtype` is deprecated. Please change "
                    "your code to use NumPy with the field ...")
    logging.warning("a warning of another kind")
  assert batch["image"].shape[0] == 4
  messages = [r.getMessage() for r in caplog.records]
  assert not [m for m in messages if "is deprecated" in m], messages
  assert "a warning of another kind" in messages
