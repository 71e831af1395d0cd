"""The metrics stage's inputs: this process's test images, the deletion fill,
and the gather of per-image values over processes (`metrics.py` uses them;
so do protocols that score other models)."""

import jax
import numpy as np
import tensorflow as tf
from jax.experimental import multihost_utils

from roar_jax.benchmark.roar.metric_options import Options
from roar_jax.data import degradation as degrade_lib
from roar_jax.data import preprocess
from roar_jax.data import source_protocol


def test_batches(config, source, options: Options, rows: int):
  """This process's test images (eval geometry, uint8) in batches of
  `rows`: {'image', 'label', 'index'}."""
  pid, nproc = jax.process_index(), jax.process_count()
  if options.num_images:
    # The first images of the split, dealt out among the processes: a
    # process slice of the split may hold none of them.
    ds = source.load("test")
    limit = tf.constant(options.num_images, tf.int64)
    ds = ds.filter(tf.autograph.experimental.do_not_convert(
        lambda ex: (tf.cast(ex["index"], tf.int64) < limit) & (
            tf.cast(ex["index"], tf.int64) % nproc == pid)))
  else:
    ds = source.load("test", process_index=pid, process_count=nproc)
  ds = ds.map(tf.autograph.experimental.do_not_convert(
      lambda ex: {"image": preprocess.eval_geometry(ex["image"], config.data),
                  "label": tf.cast(ex["label"], tf.int32),
                  "index": tf.cast(ex["index"], tf.int64)}),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(rows).prefetch(2).as_numpy_iterator()


def num_local_images(source, options: Options) -> int:
  """How many test images `_test_batches` gives this process."""
  pid, nproc = jax.process_index(), jax.process_count()
  num = int(source.info.num_examples["test"])
  if options.num_images:
    return len(range(pid, min(num, int(options.num_images)), nproc))
  start, stop = source_protocol.process_slice(num, pid, nproc)
  return stop - start


def fill_value(config, options: Options, source, channel_mean):
  """The 'channel_mean' fill: the grid's (stored or pinned), else computed
  from the training split here."""
  if options.fill != "channel_mean":
    return None
  if channel_mean is not None:
    return np.asarray(channel_mean, np.float64)
  if config.roar.get("fill_value"):
    return np.asarray(config.roar.fill_value, np.float64)
  return degrade_lib.channel_mean(source)


def gather(values: np.ndarray) -> np.ndarray:
  """Every process's rows (one process: the rows themselves)."""
  if jax.process_count() == 1:
    return values
  counts = multihost_utils.process_allgather(np.array([len(values)]))
  most = int(np.max(counts))
  padded = np.zeros((most,) + values.shape[1:], values.dtype)
  padded[:len(values)] = values
  every = multihost_utils.process_allgather(padded)
  return np.concatenate([every[p][:int(c)] for p, c in
                         enumerate(np.asarray(counts).reshape(-1))])
