"""Input pipelines: Source -> batches of numpy arrays for the train/eval steps.

`train_iterator` yields an endless stream of augmented, normalized batches;
`eval_iterator` yields every example of a split exactly once, in fixed-shape
batches whose last one is padded (mask 0, index -1), with the same number of
batches on every process, so a sharded eval step sees the same shapes
everywhere and never drops an image.

Both give each process `global_batch_size / process_count` examples per
batch. The training order is `order`'s: a pure function of (seed, step), the
same global batches whatever the number of processes; evaluation reads this
process's slice of the split (`Source.load`).
"""

from typing import Any, Iterator, Mapping

import numpy as np
import tensorflow as tf

from roar_jax.data import order
from roar_jax.data import preprocess
from roar_jax.data import source_protocol as source_lib

# Below this many bytes of decoded images, every process holds the whole
# training split in memory and gathers its batches by index (CIFAR-10:
# 150 MB); larger splits are streamed.
CACHE_LIMIT_BYTES = 2 << 30
_ENDLESS = 1 << 62


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


def _should_cache(source, split: str, data_config: Mapping[str, Any]) -> bool:
  """Whether every process holds the whole decoded split in memory."""
  choice = data_config["cache"]
  if choice is not None:
    return bool(choice)
  shape = source.info.image_shape
  if any(d is None for d in shape):
    return False
  whole = source.info.num_examples[split] * int(np.prod(shape))
  return whole <= CACHE_LIMIT_BYTES


def split_arrays(source, split: str) -> tuple[np.ndarray, np.ndarray]:
  """The whole split as (uint8 images [N, H, W, C], int64 labels [N]),
  placed by each example's global index."""
  if hasattr(source, "arrays"):
    images, labels = source.arrays(split)
    return images, np.asarray(labels, np.int64)
  n = source.info.num_examples[split]
  images = np.zeros((n, *source.info.image_shape), np.uint8)
  labels = np.full((n,), -1, np.int64)
  for ex in source.load(split).batch(1024).as_numpy_iterator():
    images[ex["index"]] = ex["image"]
    labels[ex["index"]] = ex["label"]
  if (labels < 0).any():
    raise ValueError(f"split {split!r} of {source.info.name!r} does not hold "
                     f"the {n} indices its info states")
  return images, labels


def _gathered_examples(source, split: str, *, seed: int,
                       global_batch_size: int, process_index: int,
                       process_count: int, start_step: int):
  """This process's share of every global batch from `start_step` on, by
  gathering the order's indices from the split held in memory."""
  images, labels = split_arrays(source, split)
  n = len(images)
  local = global_batch_size // process_count

  def gather(step):
    positions = order.local_positions(
        step, global_batch_size=global_batch_size,
        process_index=process_index, process_count=process_count)
    indices = order.example_indices(seed, positions, n)
    return images[indices], labels[indices], positions

  @tf.autograph.experimental.do_not_convert
  def fetch(step):
    image, label, position = tf.numpy_function(
        gather, [step], (tf.uint8, tf.int64, tf.int64), stateful=False)
    image.set_shape([local, *images.shape[1:]])
    label.set_shape([local])
    position.set_shape([local])
    return {"image": image, "label": label, "position": position}

  steps = tf.data.Dataset.range(int(start_step), _ENDLESS)
  return steps.map(fetch, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def _streamed_examples(source, split: str, data_config: Mapping[str, Any], *,
                       seed: int, global_batch_size: int, process_index: int,
                       process_count: int, start_step: int):
  """For splits too large to hold: each process reads its own slice,
  shuffled per epoch from (seed, process, epoch), and skips to its step
  within one epoch. The order then depends on the number of processes."""
  start, stop = source_lib.process_slice(source.info.num_examples[split],
                                         process_index, process_count)
  if stop == start:
    raise ValueError(f"split {split!r} of {source.info.name!r} has no "
                     f"examples for process {process_index} of "
                     f"{process_count}")
  size = stop - start
  first = int(start_step) * (global_batch_size // process_count)
  first_epoch, skip = divmod(first, size)
  ds = source.load(split, process_index=process_index,
                   process_count=process_count)
  ds = ds.map(tf.autograph.experimental.do_not_convert(
      lambda ex: {"image": ex["image"], "label": ex["label"]}))
  buffer = min(int(data_config["shuffle_buffer"]), size)
  process_seed = (int(seed) * 7919 + int(process_index)) % (1 << 40)

  @tf.autograph.experimental.do_not_convert
  def epoch(e):
    return ds.shuffle(buffer, seed=process_seed * 100_003 + e)

  ds = tf.data.Dataset.range(first_epoch, _ENDLESS).flat_map(epoch).skip(skip)
  # Positions in this process's stream, offset by the process so that no two
  # processes share an augmentation seed.
  offset = int(process_index) << 48
  return ds.enumerate(start=first).map(tf.autograph.experimental.do_not_convert(
      lambda i, ex: {**ex, "position": i + offset}))


def train_dataset(source, data_config: Mapping[str, Any], *,
                  global_batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1, split: str = "train",
                  start_step: int = 0) -> tf.data.Dataset:
  """The tf.data pipeline behind `train_iterator` (same arguments)."""
  local = local_batch_size(global_batch_size, process_count)
  kwargs = dict(seed=seed, global_batch_size=global_batch_size,
                process_index=process_index, process_count=process_count,
                start_step=start_step)
  if _should_cache(source, split, data_config):
    ds = _gathered_examples(source, split, **kwargs)
  else:
    ds = _streamed_examples(source, split, data_config, **kwargs)
  augment_seed = (int(seed) * 7919) % (1 << 62)

  # Stateless augmentation seeded by (seed, stream position): the same
  # example draw is augmented alike whatever thread, process or resume.
  # Plain TF ops (tf.cond where they branch), so autograph is not needed:
  # converted, each function leaves a generated file in the system temp
  # folder that only a clean exit removes (a killed run left them there).
  @tf.autograph.experimental.do_not_convert
  def prepare(ex):
    example_seed = tf.stack([tf.constant(augment_seed, tf.int64),
                             ex["position"]])
    image = preprocess.train_geometry(ex["image"], data_config, example_seed)
    return {"image": preprocess.normalize(image, data_config),
            "label": tf.cast(ex["label"], tf.int32)}

  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_options())


def train_iterator(source, data_config: Mapping[str, Any], *,
                   global_batch_size: int, seed: int, process_index: int = 0,
                   process_count: int = 1, split: str = "train",
                   start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Endless shuffled, augmented, normalized training batches.

  Global batch s (0-based) holds the examples `order.global_batch_indices(
  seed, s, global_batch_size, n)`; this process yields its contiguous share
  of each, from batch `start_step` on. A split larger than the memory
  limit (or `data.cache=False`) is streamed instead: each process shuffles its
  own slice (an order that depends on the number of processes).

  Args:
    source: a Source.
    data_config: `config.data` (image_size, augment, mean, std,
      shuffle_buffer, eval_resize, cache).
    global_batch_size: batch size over all processes.
    seed: shuffling and augmentation seed.
    process_index: this process.
    process_count: number of processes.
    split: the split to train on.
    start_step: the first global batch to yield (a resumed run's step).

  Returns:
    An iterator of {'image': float32 [B, S, S, C] normalized,
    'label': int32 [B]}, B = global_batch_size / process_count.
  """
  return train_dataset(
      source, data_config, global_batch_size=global_batch_size, seed=seed,
      process_index=process_index, process_count=process_count,
      split=split, start_step=start_step).as_numpy_iterator()


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

  @tf.autograph.experimental.do_not_convert  # As train_dataset's.
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

  @tf.autograph.experimental.do_not_convert  # No temp files: see above.
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
