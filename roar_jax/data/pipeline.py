"""Input pipelines: Source -> batches of numpy arrays for the train/eval steps.

`train_iterator` yields an endless stream of augmented, normalized batches;
`eval_iterator` yields every example of a split exactly once, in fixed-shape
batches whose last one is padded (mask 0, index -1), with the same number of
batches on every process, so a sharded eval step sees the same shapes
everywhere and never drops an image.

Both read this process's slice of the split (`Source.load`) and give each
process `global_batch_size / process_count` examples per batch.
"""

from typing import Any, Iterator, Mapping

import numpy as np
import tensorflow as tf

from roar_jax.data import preprocess
from roar_jax.data import source_protocol as source_lib

# Below this many bytes of decoded images per process, the training split is
# cached in memory after its first pass (CIFAR-10: 150 MB).
CACHE_LIMIT_BYTES = 2 << 30


def local_batch_size(global_batch_size: int, process_count: int,
                     field: str = "global_batch_size") -> int:
  """global / process_count, checked to be a positive whole number."""
  if (not isinstance(global_batch_size, (int, np.integer)) or
      global_batch_size <= 0 or global_batch_size % process_count):
    raise ValueError(f"{field}={global_batch_size} must be a positive "
                     f"multiple of the number of processes ({process_count})")
  return int(global_batch_size) // process_count


def num_eval_batches(num_examples: int, global_batch_size: int,
                     process_count: int = 1) -> int:
  """Number of batches `eval_iterator` yields on every process."""
  local = local_batch_size(global_batch_size, process_count)
  largest_slice = -(-num_examples // process_count)
  return -(-largest_slice // local)


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True  # Same config and seed, same batches.
  options.experimental_optimization.map_parallelization = True
  return options


def _channels(source) -> int:
  return int(source.info.image_shape[-1])


def _should_cache(source, split: str, data_config: Mapping[str, Any],
                  process_count: int) -> bool:
  choice = data_config["cache"]
  if choice is not None:
    return bool(choice)
  shape = source.info.image_shape
  if any(d is None for d in shape):
    return False
  per_process = -(-source.info.num_examples[split] // process_count)
  return per_process * int(np.prod(shape)) <= CACHE_LIMIT_BYTES


def train_dataset(source, data_config: Mapping[str, Any], *,
                  global_batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1,
                  split: str = "train") -> tf.data.Dataset:
  """The tf.data pipeline behind `train_iterator` (same arguments)."""
  local = local_batch_size(global_batch_size, process_count)
  start, stop = source_lib.process_slice(source.info.num_examples[split],
                                         process_index, process_count)
  if stop == start:
    raise ValueError(f"split {split!r} of {source.info.name!r} has no "
                     f"examples for process {process_index} of "
                     f"{process_count}")
  ds = source.load(split, process_index=process_index,
                   process_count=process_count)
  ds = ds.map(lambda ex: {"image": ex["image"], "label": ex["label"]})
  if _should_cache(source, split, data_config, process_count):
    ds = ds.cache()
  buffer = int(data_config["shuffle_buffer"])
  # Each process shuffles its own slice with its own stream of the seed.
  process_seed = (int(seed) * 7919 + int(process_index)) % (1 << 62)
  ds = ds.shuffle(min(buffer, stop - start), seed=process_seed,
                  reshuffle_each_iteration=True).repeat()
  # Augmentations use stateless random ops seeded by (seed, example counter):
  # reproducible however many threads the map runs on.
  def prepare(count, ex):
    example_seed = tf.stack([tf.constant(process_seed, tf.int64), count])
    image = preprocess.train_geometry(ex["image"], data_config, example_seed)
    return {"image": preprocess.normalize(image, data_config),
            "label": tf.cast(ex["label"], tf.int32)}

  ds = ds.enumerate().map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_options())


def train_iterator(source, data_config: Mapping[str, Any], *,
                   global_batch_size: int, seed: int, process_index: int = 0,
                   process_count: int = 1,
                   split: str = "train") -> Iterator[dict[str, np.ndarray]]:
  """Endless shuffled, augmented, normalized training batches.

  Args:
    source: a Source.
    data_config: `config.data` (image_size, augment, mean, std,
      shuffle_buffer, eval_resize).
    global_batch_size: batch size over all processes.
    seed: shuffling and augmentation seed.
    process_index: this process.
    process_count: number of processes.
    split: the split to train on.

  Returns:
    An iterator of {'image': float32 [B, S, S, C] normalized,
    'label': int32 [B]}, B = global_batch_size / process_count.
  """
  return train_dataset(
      source, data_config, global_batch_size=global_batch_size, seed=seed,
      process_index=process_index, process_count=process_count,
      split=split).as_numpy_iterator()


def eval_dataset(source, data_config: Mapping[str, Any], split: str, *,
                 global_batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> tf.data.Dataset:
  """The tf.data pipeline behind `eval_iterator` (same arguments)."""
  local = local_batch_size(global_batch_size, process_count)
  size = preprocess.image_size_of(data_config)
  channels = _channels(source)
  n = source.info.num_examples[split]
  start, stop = source_lib.process_slice(n, process_index, process_count)
  num_batches = num_eval_batches(n, global_batch_size, process_count)
  num_pad = num_batches * local - (stop - start)

  def prepare(ex):
    image = preprocess.eval_geometry(ex["image"], data_config)
    return {"image": preprocess.normalize(image, data_config),
            "label": tf.cast(ex["label"], tf.int32),
            "index": tf.cast(ex["index"], tf.int64),
            "mask": tf.constant(1.0, tf.float32)}

  ds = source.load(split, process_index=process_index,
                   process_count=process_count)
  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  padding = tf.data.Dataset.from_tensors({
      "image": tf.zeros([size, size, channels], tf.float32),
      "label": tf.constant(0, tf.int32),
      "index": tf.constant(-1, tf.int64),
      "mask": tf.constant(0.0, tf.float32),
  }).repeat(num_pad)
  ds = ds.concatenate(padding).batch(local, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


class _SizedIterator:
  """An iterator that knows its length (for progress bars)."""

  def __init__(self, iterator, length: int):
    self._iterator = iterator
    self._length = length

  def __iter__(self):
    return self

  def __next__(self):
    return next(self._iterator)

  def __len__(self):
    return self._length


def eval_iterator(source, data_config: Mapping[str, Any], split: str, *,
                  global_batch_size: int, process_index: int = 0,
                  process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Every example of `split` once, in fixed-shape, padded batches.

  Args:
    source: a Source.
    data_config: `config.data` (image_size, eval_resize, mean, std).
    split: the split to evaluate.
    global_batch_size: batch size over all processes.
    process_index: this process.
    process_count: number of processes.

  Returns:
    An iterator (with len()) of {'image': float32 [B, S, S, C] normalized,
    'label': int32 [B], 'index': int64 [B] (-1 for padding), 'mask': float32
    [B] (1 real, 0 padding)}, B = global_batch_size / process_count; every
    process yields `num_eval_batches(...)` batches.
  """
  n = source.info.num_examples[split]
  ds = eval_dataset(source, data_config, split,
                    global_batch_size=global_batch_size,
                    process_index=process_index, process_count=process_count)
  return _SizedIterator(ds.as_numpy_iterator(),
                        num_eval_batches(n, global_batch_size, process_count))


def channel_mean_std(source, split: str = "train", *,
                     num_examples: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and standard deviation of a split, in [0, 1] units.

  For `config.data.mean`/`std`, and for the 'channel_mean' fill of the
  degradation. Accumulated in float64 over every pixel of every image (of the
  first `num_examples` when given).

  Args:
    source: a Source.
    split: the split to measure.
    num_examples: use only the first N examples.

  Returns:
    (mean float64 [C], std float64 [C]).
  """
  ds = source.load(split)
  if num_examples is not None:
    ds = ds.take(num_examples)

  def stats(ex):
    x = tf.cast(ex["image"], tf.float64) / 255.0
    x = tf.reshape(x, [-1, tf.shape(x)[-1]])
    return (tf.reduce_sum(x, 0), tf.reduce_sum(x * x, 0),
            tf.cast(tf.shape(x)[0], tf.float64))

  ds = ds.map(stats, num_parallel_calls=tf.data.AUTOTUNE).batch(1024)
  total = total_sq = count = 0.0
  for s, sq, c in ds.as_numpy_iterator():
    total = total + s.sum(0)
    total_sq = total_sq + sq.sum(0)
    count += c.sum()
  if count == 0:
    raise ValueError(f"split {split!r} of {source.info.name!r} is empty")
  mean = total / count
  var = np.maximum(total_sq / count - mean * mean, 0.0)
  return mean, np.sqrt(var)


def as_numpy(ds: tf.data.Dataset) -> dict[str, np.ndarray]:
  """A small dataset of dicts, stacked into numpy arrays (tests, tools)."""
  out: dict[str, list[Any]] = {}
  for ex in ds.as_numpy_iterator():
    for k, v in ex.items():
      out.setdefault(k, []).append(v)
  return {k: np.stack(v) for k, v in out.items()}
