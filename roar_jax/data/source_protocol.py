"""The Source protocol: what every stage reads examples from.

This module holds the protocol, the `DatasetInfo` every Source carries, the
process-slice arithmetic, and `ArraySource`, the Source over in-memory arrays.
The Sources of the configured datasets are built by `sources.get_source`.

A `Source` hands out the raw examples of one split as a `tf.data.Dataset` of dicts
`{'image': uint8 [H, W, C], 'label': int64 [], 'index': int64 []}` in a fixed,
deterministic order. `index` is the example's position in the WHOLE split, so
the rank store, the `random` control and the degraded datasets can key an image
the same way on every process and every rerun.

When several JAX processes run, each process reads only its contiguous slice of
a split (the even split of `tfds.split_for_jax_process`); indices stay global.
"""

import dataclasses
from typing import Protocol, Sequence

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the rest of the pipeline needs to know about a dataset.

  Attributes:
    name: dataset name, for logs and reports.
    num_classes: number of labels.
    image_shape: (H, W, C) of the stored uint8 images.
    num_examples: split name -> number of examples in the whole split.
    class_names: optional label names, index-aligned.
  """
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  num_examples: dict[str, int]
  class_names: tuple[str, ...] | None = None


class Source(Protocol):
  """A dataset that can be read split by split, each process its own slice."""

  info: DatasetInfo

  def load(self, split: str, *, process_index: int = 0,
           process_count: int = 1) -> tf.data.Dataset:
    """This process's slice of `split`, in a fixed order, with global indices."""
    ...


def process_slice(num_examples: int, process_index: int,
                  process_count: int) -> tuple[int, int]:
  """[start, stop) of the contiguous even slice that one process reads.

  The same arithmetic as `tfds.even_splits`: the first `num_examples %
  process_count` processes get one example more.

  Args:
    num_examples: size of the whole split.
    process_index: this process, in [0, process_count).
    process_count: number of processes.

  Returns:
    (start, stop) indices into the split.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(
        f"process_index={process_index} outside [0, {process_count})")
  base, extra = divmod(num_examples, process_count)
  start = process_index * base + min(process_index, extra)
  stop = start + base + (1 if process_index < extra else 0)
  return start, stop


class ArraySource:
  """A Source over in-memory numpy arrays (synthetic data, tests, fixtures)."""

  def __init__(self, info: DatasetInfo,
               splits: dict[str, tuple[np.ndarray, np.ndarray]]):
    """Builds the source.

    Args:
      info: dataset description; `num_examples` must match the arrays.
      splits: split name -> (images uint8 [N, H, W, C], labels int [N]).
    """
    for split, (images, labels) in splits.items():
      if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"split {split!r}: images must be uint8 [N, H, W, C],"
                         f" got {images.dtype} {images.shape}")
      if len(images) != len(labels):
        raise ValueError(f"split {split!r}: {len(images)} images but "
                         f"{len(labels)} labels")
    self.info = info
    self._splits = splits

  @property
  def splits(self) -> Sequence[str]:
    return tuple(self._splits)

  def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The whole split as (images, labels) numpy arrays."""
    return self._splits[_check_split(split, self._splits)]

  def load(self, split: str, *, process_index: int = 0,
           process_count: int = 1) -> tf.data.Dataset:
    images, labels = self.arrays(split)
    start, stop = process_slice(len(images), process_index, process_count)
    return tf.data.Dataset.from_tensor_slices({
        "image": images[start:stop],
        "label": labels[start:stop].astype(np.int64),
        "index": np.arange(start, stop, dtype=np.int64),
    })


def _check_split(split, available):
  if split not in available:
    raise ValueError(f"unknown split {split!r}; this dataset has "
                     f"{sorted(available)}")
  return split
