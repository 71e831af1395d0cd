"""Sources over TFDS: a catalog builder, or a prepared dataset directory.

Both read in a fixed order (`shuffle_files=False`, one file at a time), each
process its contiguous even slice, with `index` = the example's global position
in its split (the stored 'index' feature where there is one).
"""

import logging as pylogging
import os
from typing import Mapping

import tensorflow as tf
import tensorflow_datasets as tfds

from roar_jax.data import source_protocol
from roar_jax.data.errors import DataError, first_line

# For a dataset directory without a 'test' split, the split that stands in.
TEST_STAND_INS = ("test", "validation", "val")


class _DropFeatureDtypeNotice(pylogging.Filter):
  """Drops TFDS's "`FeatureConnector.dtype` is deprecated" warning.

  TFDS's own `Tensor.decode_example` reads the deprecated attribute when it
  decodes a bytes-encoded tensor (the IDX and toy builders store images so),
  so every read of such a dataset warned about code that is not ours; only
  that one message is dropped.
  """

  def filter(self, record: pylogging.LogRecord) -> bool:
    message = str(record.msg)
    return not (message.startswith("`") and
                ".dtype` is deprecated" in message)


# TFDS logs through absl's Python logger; one filter for the process.
if not any(isinstance(f, _DropFeatureDtypeNotice)
           for f in pylogging.getLogger("absl").filters):
  pylogging.getLogger("absl").addFilter(_DropFeatureDtypeNotice())


def _default_split_map(splits) -> dict[str, str]:
  out = {s: s for s in splits}
  for candidate in TEST_STAND_INS:
    if candidate in splits:
      out.setdefault("test", candidate)
      break
  return out


def _check_features(features, name: str, where) -> tfds.features.ClassLabel:
  """The ClassLabel 'label' feature; 'image' and 'label' checked."""
  for key in ("image", "label"):
    if key not in features:
      raise DataError(f"dataset {name!r} at {where} has no {key!r} feature; "
                      f"it has {sorted(features)}")
  label = features["label"]
  if not isinstance(label, tfds.features.ClassLabel):
    raise DataError(f"dataset {name!r} at {where}: 'label' must be a "
                    f"ClassLabel, got {type(label).__name__}")
  return label


class TfdsSource:
  """A Source over a TFDS builder: ordered reads, process slices, caps."""

  def __init__(self, builder: tfds.core.DatasetBuilder, *, name: str,
               split_map: Mapping[str, str] | None = None,
               caps: Mapping[str, int | None] | None = None):
    """Builds the source.

    Args:
      builder: a prepared TFDS builder whose features hold 'image' and a
        ClassLabel 'label' (and optionally 'index').
      name: the dataset's name for logs and reports.
      split_map: our split name -> the builder's split name; default: every
        builder split under its own name, with 'validation' (or 'val')
        standing in for a missing 'test'.
      caps: our split name -> keep only the first N examples (None: all).
    """
    self._builder = builder
    tfds_info = builder.info
    available = list(tfds_info.splits.keys())
    self._split_map = dict(split_map or _default_split_map(available))
    for ours, theirs in self._split_map.items():
      if theirs not in available:
        raise DataError(f"dataset {name!r} at {builder.data_dir} has no "
                        f"split {theirs!r} (for {ours!r}); it has "
                        f"{sorted(available)}")
    features = tfds_info.features
    label = _check_features(features, name, builder.data_dir)
    num_examples = {}
    caps = caps or {}
    for ours, theirs in self._split_map.items():
      n = tfds_info.splits[theirs].num_examples
      cap = caps.get(ours)
      num_examples[ours] = n if cap is None else min(n, cap)
    self._has_index = "index" in features
    self.info = source_protocol.DatasetInfo(
        name=name, num_classes=label.num_classes,
        image_shape=tuple(features["image"].shape),
        num_examples=num_examples, class_names=tuple(label.names))

  @property
  def builder(self) -> tfds.core.DatasetBuilder:
    return self._builder

  @property
  def splits(self) -> tuple[str, ...]:
    return tuple(self._split_map)

  def load(self, split: str, *, process_index: int = 0,
           process_count: int = 1) -> tf.data.Dataset:
    """This process's slice of `split`, in stored order, with global indices.

    `index` is the stored 'index' feature where the dataset has one (the
    offline builders and the ROAR writer store it), else the position in the
    split.
    """
    if split not in self._split_map:
      raise ValueError(f"unknown split {split!r}; dataset {self.info.name!r} "
                       f"has {sorted(self._split_map)}")
    theirs = self._split_map[split]
    n = self.info.num_examples[split]
    start, stop = source_protocol.process_slice(n, process_index,
                                                process_count)
    # Interleaving several files would change the order; one file at a time
    # keeps the stored order, which `index` relies on.
    read_config = tfds.ReadConfig(interleave_cycle_length=1,
                                  interleave_block_length=None)
    # More processes than examples leave a slice empty; TFDS refuses empty
    # slices, so read one example and take none of it.
    empty = stop == start
    ds = self._builder.as_dataset(
        split=f"{theirs}[0:1]" if empty else f"{theirs}[{start}:{stop}]",
        shuffle_files=False, read_config=read_config)
    if empty:
      ds = ds.take(0)
    has_index = self._has_index

    @tf.autograph.experimental.do_not_convert  # No temp files: pipeline.py.
    def select(position, ex):
      index = ex["index"] if has_index else position + start
      return {"image": ex["image"], "label": tf.cast(ex["label"], tf.int64),
              "index": tf.cast(index, tf.int64)}

    return ds.enumerate().map(select)


class DirectorySource(TfdsSource):
  """A Source over a prepared TFDS dataset directory (builder_from_directory).

  Used for the offline builders' output and for the degraded datasets the ROAR
  writer produces.
  """

  def __init__(self, path: str, *, name: str | None = None,
               split_map: Mapping[str, str] | None = None,
               caps: Mapping[str, int | None] | None = None):
    """Builds the source.

    Args:
      path: the dataset's versioned directory (holding dataset_info.json).
      name: the dataset's name; default the builder's name.
      split_map: as in `TfdsSource`.
      caps: as in `TfdsSource`.

    Raises:
      DataError: the directory is not a prepared dataset, or its metadata
        cannot be read.
    """
    path = os.path.expanduser(os.fspath(path))
    if not os.path.exists(os.path.join(path, "dataset_info.json")):
      raise DataError(f"{path} is not a prepared TFDS dataset directory "
                      "(no dataset_info.json)")
    try:
      builder = tfds.builder_from_directory(path)
    except Exception as e:  # TFDS raises many types for damaged metadata.
      raise DataError(f"{path}: cannot read the prepared dataset "
                      f"({first_line(e)}); delete it to prepare it again"
                      ) from None
    super().__init__(builder, name=name or builder.name, split_map=split_map,
                     caps=caps)
