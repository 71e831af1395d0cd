"""The Birdsnap builder on a tiny manual_dir in the official layout."""

import hashlib
import io
import os
import shutil

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from birdsnap_fake import (ROWS, SPECIES, TEST_PATHS, grouped_rows,
                           make_manual_dir, value)
from roar_jax.data import birdsnap

def _expected(split: str, skip=()):
  """(path, label, gray level) of a split in stored order.

  Stored order: by the SHA-1 of the image's path (a deterministic shuffle, as
  TFDS builders shuffle by a hash of the key), not images.txt order.
  """
  out = []
  for row, (species_id, path) in enumerate(ROWS):
    if path in skip or (path in TEST_PATHS) != (split == "test"):
      continue
    out.append((path, species_id - 1, value(row)))
  return sorted(out, key=lambda e: hashlib.sha1(e[0].encode()).digest())


def _read(builder, split, decoders=None):
  ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
  return list(tfds.as_numpy(ds))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("birdsnap")
  manual_dir = make_manual_dir(root / "manual")
  builder = birdsnap.birdsnap_source_builder(manual_dir, str(root / "tfds"))
  return builder, str(root / "tfds")


def test_split_sizes_labels_and_names(prepared):
  builder, _ = prepared
  info = builder.info
  assert info.splits["train"].num_examples == 9
  assert info.splits["test"].num_examples == 3
  assert info.features["label"].names == [s[1] for s in SPECIES]
  assert info.features["label"].num_classes == 3
  assert info.metadata["missing"] == {"train": 0, "test": 0}
  assert info.metadata["num_listed"] == {"train": 9, "test": 3}


@pytest.mark.parametrize("split", ["train", "test"])
def test_examples_are_stored_in_path_hash_order(prepared, split):
  builder, _ = prepared
  examples = _read(builder, split)
  expected = _expected(split)
  assert [int(e["index"]) for e in examples] == list(range(len(expected)))
  assert [int(e["label"]) for e in examples] == [lab for _, lab, _ in expected]
  for e, (path, _, level) in zip(examples, expected):
    assert e["image"].shape == (16, 16, 3), path
    # A solid gray survives JPEG within a level or two.
    np.testing.assert_allclose(e["image"].mean(), level, atol=2, err_msg=path)


def test_slices_keep_global_indices_and_rereads_match(prepared):
  builder, data_dir = prepared
  part = _read(builder, "train[3:6]")
  assert [int(e["index"]) for e in part] == [3, 4, 5]
  # Read back without manual_dir (already prepared) and from the directory.
  again = birdsnap.birdsnap_source_builder(None, data_dir)
  from_dir = tfds.builder_from_directory(builder.data_dir)
  for other in (again, from_dir):
    assert other.info.features["label"].names == [s[1] for s in SPECIES]
    first, second = _read(builder, "test"), _read(other, "test")
    for a, b in zip(first, second, strict=True):
      np.testing.assert_array_equal(a["image"], b["image"])
      assert (a["label"], a["index"]) == (b["label"], b["index"])


def test_species_grouped_list_is_stored_mixed(tmp_path):
  """Issue 14: a list grouped by species must not be stored grouped."""
  test_paths = [f"{d}/0000.jpg" for *_, d in SPECIES]
  labels = []
  for order in (1, -1):
    manual_dir = make_manual_dir(tmp_path / f"m{order}",
                                 grouped_rows(order=order), test_paths)
    builder = birdsnap.birdsnap_source_builder(manual_dir,
                                               str(tmp_path / f"tfds{order}"))
    examples = _read(builder, "train")
    labels.append([int(e["label"]) for e in examples])
    assert [int(e["index"]) for e in examples] == list(range(21))
  got = labels[0]
  assert sorted(got) == [0] * 7 + [1] * 7 + [2] * 7
  # Grouped, the labels would change twice; here they change often, and the
  # first seven examples (one species' worth) hold every species.
  changes = sum(a != b for a, b in zip(got, got[1:]))
  assert changes >= 8, got
  assert set(got[:7]) == {0, 1, 2}, got
  # The stored order does not depend on the order of images.txt: the reversed
  # list stores the images in the same order: the order of their paths' hashes.
  assert labels[1] == got
  train = sorted(((p, s - 1) for s, p in grouped_rows()
                  if p not in test_paths),
                 key=lambda e: hashlib.sha1(e[0].encode()).digest())
  assert got == [label for _, label in train]


def test_missing_list_files_are_all_named(tmp_path):
  manual_dir = make_manual_dir(tmp_path / "m")
  os.remove(os.path.join(manual_dir, "species.txt"))
  os.remove(os.path.join(manual_dir, "test_images.txt"))
  with pytest.raises(ValueError) as e:
    birdsnap.birdsnap_source_builder(manual_dir, str(tmp_path / "tfds"))
  message = str(e.value)
  assert "list file species.txt" in message
  assert "list file test_images.txt" in message
  assert "list file images.txt" not in message  # It is there.
  assert "image folder" not in message
  assert not os.path.exists(tmp_path / "tfds" / "birdsnap")


def test_missing_image_folder_and_manual_dir(tmp_path):
  manual_dir = make_manual_dir(tmp_path / "m")
  shutil.rmtree(os.path.join(manual_dir, "download"))
  with pytest.raises(ValueError, match=r"image folder .*download/images"):
    birdsnap.read_lists(manual_dir)
  with pytest.raises(ValueError, match="does not exist"):
    birdsnap.read_lists(str(tmp_path / "nowhere"))
  with pytest.raises(ValueError, match=r"config\.data\.manual_dir"):
    birdsnap.birdsnap_source_builder(None, str(tmp_path / "tfds"))


def test_too_many_absent_images_fail_with_counts(tmp_path):
  manual_dir = make_manual_dir(tmp_path / "m")
  absent = ["Blue_Jay/0311.jpg", "Snow_Goose/0020.jpg", "Blue_Jay/0077.jpg"]
  for path in absent:
    os.remove(os.path.join(manual_dir, birdsnap.IMAGE_SUBDIR, path))
  with pytest.raises(ValueError) as e:
    birdsnap.birdsnap_source_builder(manual_dir, str(tmp_path / "tfds"))
  message = str(e.value)
  assert "3 of 9 train images" in message
  assert "0 of 3 test images" in message
  assert "max_missing_fraction=0.1" in message
  # 3/9 is within a tolerance of 0.4 but not of 0.3.
  with pytest.raises(ValueError, match="3 of 9 train"):
    birdsnap.read_lists(manual_dir, max_missing_fraction=0.3)
  lists = birdsnap.read_lists(manual_dir, max_missing_fraction=0.4)
  assert lists.missing == {"train": tuple(absent), "test": ()}
  assert lists.num_listed == {"train": 9, "test": 3}


def test_tolerated_absent_images_are_skipped_and_counted(tmp_path):
  manual_dir = make_manual_dir(tmp_path / "m")
  absent = ["Coopers_Hawk/0005.jpg", "Snow_Goose/0003.jpg"]  # train, test
  for path in absent:
    os.remove(os.path.join(manual_dir, birdsnap.IMAGE_SUBDIR, path))
  # A PNG saved under .jpg (what some downloads are) is stored as a JPEG.
  png_row = [p for _, p in ROWS].index("Blue_Jay/0150.jpg")
  PIL.Image.fromarray(np.full((16, 16, 3), value(png_row), np.uint8)).save(
      os.path.join(manual_dir, birdsnap.IMAGE_SUBDIR, "Blue_Jay/0150.jpg"),
      format="PNG")
  builder = birdsnap.birdsnap_source_builder(
      manual_dir, str(tmp_path / "tfds"), max_missing_fraction=0.5)
  assert builder.info.metadata["missing"] == {"train": 1, "test": 1}
  for split, size in (("train", 8), ("test", 2)):
    expected = _expected(split, skip=absent)
    examples = _read(builder, split)
    assert len(examples) == size == builder.info.splits[split].num_examples
    assert [int(e["index"]) for e in examples] == list(range(size))
    assert [int(e["label"]) for e in examples] == [lab for _, lab, _ in
                                                   expected]
    means = [float(e["image"].mean()) for e in examples]
    np.testing.assert_allclose(means, [v for _, _, v in expected], atol=2)
  raw = _read(builder, "train", decoders={"image": tfds.decode.SkipDecoding()})
  assert all(e["image"][:2] == b"\xff\xd8" for e in raw)  # JPEG, PNG included.


def test_damaged_image_is_named(tmp_path):
  path = tmp_path / "cut.jpg"
  image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
  out = io.BytesIO()
  PIL.Image.fromarray(image).save(out, format="JPEG")
  path.write_bytes(out.getvalue()[:len(out.getvalue()) // 2])
  with pytest.raises(ValueError, match="cut.jpg cannot be read"):
    birdsnap.jpeg_bytes(str(path))
  path.write_bytes(out.getvalue())
  assert birdsnap.jpeg_bytes(str(path)) == out.getvalue()  # Kept as is.


def test_inconsistent_lists_are_rejected(tmp_path):
  manual_dir = make_manual_dir(tmp_path / "m")
  with open(os.path.join(manual_dir, "test_images.txt"), "a") as f:
    f.write("Blue_Jay/9999.jpg\n")
  with pytest.raises(ValueError, match=r"1 paths are not in images\.txt"):
    birdsnap.read_lists(manual_dir)
  with open(os.path.join(manual_dir, "species.txt"), "a") as f:
    f.write("5\tRaven\tCorvus corax\tRaven\n")  # id 4 skipped
  with pytest.raises(ValueError, match="species ids must run from 1"):
    birdsnap.read_lists(manual_dir)


def test_source_takes_the_configs_missing_tolerance(tmp_path):
  """get_source passes config.data.max_missing_fraction to the builder."""
  from conftest import data_config  # pylint: disable=g-import-not-at-top
  from roar_jax.data import sources  # pylint: disable=g-import-not-at-top
  manual_dir = make_manual_dir(tmp_path / "m")
  for path in ("Blue_Jay/0311.jpg", "Snow_Goose/0020.jpg"):  # 2 of 9 train
    os.remove(os.path.join(manual_dir, birdsnap.IMAGE_SUBDIR, path))
  config = data_config(name="birdsnap", manual_dir=manual_dir,
                       data_dir=str(tmp_path / "tfds"))
  with pytest.raises(ValueError, match=r"2 of 9 train .*=0\.1\b"):
    sources.get_source(config)  # The builder's default: 0.1.
  config.max_missing_fraction = 0.3
  source = sources.get_source(config)
  assert source.info.num_examples == {"train": 7, "test": 3}
  # A value outside [0, 1] is refused at start-up, in one line.
  from conftest import load_config  # pylint: disable=g-import-not-at-top
  from roar_jax.config import validation  # pylint: disable=g-import-not-at-top
  full = load_config("birdsnap_resnet50")
  with full.unlocked():
    full.data.manual_dir = manual_dir
    full.data.max_missing_fraction = 1.5
  with pytest.raises(validation.ConfigError,
                     match=r"^config\.data\.max_missing_fraction=1\.5 must"):
    validation.validate(full, "train")
