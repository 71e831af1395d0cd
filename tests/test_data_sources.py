"""get_source: dataset names, local paths, TFDS split names, caps, errors."""

import os
import tarfile

import ml_collections
import numpy as np
import pytest

from conftest import data_config
import tensorflow_datasets as tfds

from roar_jax.config import defaults as config_lib
from roar_jax.data import idx
from roar_jax.data import image_folder
from roar_jax.data import sources
from roar_jax.data import synthetic

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
CIFAR_MINI = os.path.join(FIXTURES, "cifar10-mini.tar.gz")
FASHION_MINI = os.path.join(FIXTURES, "fashion-mnist-mini")




def _read_all(source, split, **kwargs):
  batches = list(source.load(split, **kwargs).batch(4096).as_numpy_iterator())
  if not batches:
    return {}
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def validation_folder(tmp_path_factory):
  """The CIFAR fixture with its test/ folder renamed validation/."""
  root = tmp_path_factory.mktemp("valfolder")
  with tarfile.open(CIFAR_MINI, "r:gz") as tar:
    tar.extractall(root, filter="data")
  os.rename(root / "test", root / "validation")
  return str(root)


def test_unknown_name_is_named_with_the_known_ones():
  with pytest.raises(ValueError) as e:
    sources.get_source(data_config(name="cifar100"))
  msg = str(e.value)
  assert "config.data.name='cifar100'" in msg
  for known in sources.KNOWN_DATASETS:
    assert known in msg


def test_missing_or_unusable_path_is_named(tmp_path):
  missing = str(tmp_path / "no_such_dir")
  with pytest.raises(ValueError, match=f"config.data.path: {missing} does "
                     "not exist"):
    sources.get_source(data_config(name="cifar10", path=missing))
  plain = tmp_path / "notes.txt"
  plain.write_text("hello")
  with pytest.raises(ValueError, match="config.data.path: .*notes.txt is "
                     "neither"):
    sources.get_source(data_config(name="cifar10", path=str(plain)))


def test_image_folder_without_test_split_is_named(tmp_path):
  root = tmp_path / "trainonly"
  with tarfile.open(CIFAR_MINI, "r:gz") as tar:
    tar.extractall(root, filter="data")
  for f in os.listdir(root / "test"):
    for g in os.listdir(root / "test" / f):
      os.remove(root / "test" / f / g)
  with pytest.raises(ValueError, match="trainonly has no 'test' split"):
    sources.get_source(data_config(name="cifar10", path=str(root),
                                    data_dir=str(tmp_path / "tfds")))


def test_bad_caps_and_catalog_requirements_are_named(tmp_path):
  with pytest.raises(ValueError, match="config.data.num_train=0"):
    sources.get_source(data_config(name="toy", num_train=0))
  with pytest.raises(ValueError, match="config.data.manual_dir"):
    sources.get_source(data_config(name="birdsnap", data_dir=str(tmp_path)))
  with pytest.raises(ValueError, match="config.data.manual_dir"):
    sources.get_source(data_config(name="imagenet2012",
                                    data_dir=str(tmp_path)))


def test_toy_source_and_caps():
  config = config_lib.base_config().data
  config.toy = ml_collections.ConfigDict({"num_train": 40, "num_test": 20,
                                          "seed": 1})
  full = sources.get_source(config)
  config.num_train, config.num_test = 12, 50
  capped = sources.get_source(config)
  assert full.info.num_examples == {"train": 40, "test": 20}
  assert capped.info.num_examples == {"train": 12, "test": 20}
  reference, labels = synthetic.toy_source(config.toy).arrays("train")
  got = _read_all(capped, "train")
  np.testing.assert_array_equal(got["image"], reference[:12])
  np.testing.assert_array_equal(got["label"], labels[:12])
  np.testing.assert_array_equal(got["index"], np.arange(12))


def test_image_folder_path_with_caps_and_process_slices(data_dir):
  config = data_config(name="cifar10", path=CIFAR_MINI, data_dir=data_dir)
  full = sources.get_source(config)
  assert full.info.name == "cifar10"
  assert full.info.num_examples == {"train": 200, "test": 100}
  config.num_test = 25
  capped = sources.get_source(config)
  assert capped.info.num_examples == {"train": 200, "test": 25}
  whole = _read_all(full, "test")
  parts = [_read_all(capped, "test", process_index=p, process_count=2)
           for p in range(2)]
  np.testing.assert_array_equal(parts[0]["index"], np.arange(13))
  np.testing.assert_array_equal(parts[1]["index"], np.arange(13, 25))
  for key in ("image", "label", "index"):
    np.testing.assert_array_equal(
        np.concatenate([p[key] for p in parts]), whole[key][:25])
  # More processes than examples: the surplus processes read nothing.
  config.num_test = 3
  tiny = sources.get_source(config)
  slices = [_read_all(tiny, "test", process_index=p, process_count=5)
            for p in range(5)]
  assert [len(s.get("index", [])) for s in slices] == [1, 1, 1, 0, 0]


def test_idx_path_gets_fashion_mnist_class_names(data_dir):
  src = sources.get_source(data_config(name="fashion_mnist",
                                        path=FASHION_MINI, data_dir=data_dir))
  assert src.info.class_names == idx.FASHION_MNIST_CLASSES
  assert src.info.num_examples == {"train": 150, "test": 50}


def test_directory_source_uses_validation_as_test(validation_folder, data_dir):
  path = image_folder.prepare_image_folder(validation_folder, data_dir)
  src = sources.DirectorySource(path)
  assert set(src.splits) == {"train", "validation", "test"}
  np.testing.assert_array_equal(_read_all(src, "test")["image"],
                                _read_all(src, "validation")["image"])
  with pytest.raises(ValueError, match="not a prepared TFDS dataset"):
    sources.DirectorySource(os.path.dirname(path))


def test_catalog_names_map_our_splits_to_tfds_splits(validation_folder,
                                                     data_dir, monkeypatch):
  """food101's 'validation' is our 'test'; the builder is asked by name."""
  prepared = image_folder.prepare_image_folder(validation_folder, data_dir)
  asked = []

  def fake_builder(name, data_dir=None):
    asked.append((name, data_dir))
    return tfds.builder_from_directory(prepared)

  monkeypatch.setattr(sources.tfds, "builder", fake_builder)
  config = data_config(name="food101", data_dir="/tmp/somewhere",
                        num_train=30)
  src = sources.get_source(config)
  assert asked == [("food101", "/tmp/somewhere")]
  assert src.info.name == "food101"
  assert src.info.num_examples == {"train": 30, "test": 100}
  reference = sources.DirectorySource(prepared)
  np.testing.assert_array_equal(_read_all(src, "test")["image"],
                                _read_all(reference, "validation")["image"])
  np.testing.assert_array_equal(_read_all(src, "train")["label"],
                                np.arange(30) % 10)
  config.name = "cifar10"  # Its TFDS test split is 'test', absent here.
  with pytest.raises(ValueError, match="has no split 'test'"):
    sources.get_source(config)
