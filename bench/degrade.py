r"""Cost of degrading on the fly, against a toy training step, side by side.

  python bench/degrade.py

Measures, in one run on this machine:
- the toy config's jitted train step (batch 64, the small CNN), per step;
- pulling one training batch from the plain toy input pipeline, and from the
  same pipeline with ROAR degradation on the fly (rank store lookup + fill),
  for fill='channel_mean' and fill='noisy_linear' (ROAD).
It prints the extra input time per batch as a fraction of a training step
(target for 'channel_mean': at most 10%). tf.data runs the pipeline on its own
threads, overlapped with the step, so this fraction is an upper bound on what
on-the-fly degradation adds to a training run.
"""

import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from roar_jax import data, training  # noqa: E402
from roar_jax.config import defaults as config_lib  # noqa: E402
from roar_jax.saliency import rank  # noqa: E402


def _median_time(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def _batch_time(make_iterator, batches):
  """Mean seconds per batch over a whole toy training run's input, from a
  fresh iterator: the first epoch's work (decoding, degrading, caching)
  included, as a training run pays it."""
  start = time.perf_counter()
  iterator = make_iterator()
  for _ in range(batches):
    next(iterator)
  return (time.perf_counter() - start) / batches


def main():
  config = config_lib.load("toy")
  source = data.get_source(config.data)
  mesh = training.create_mesh()
  bs = config.train.batch_size

  # The train step, as the trainer runs it.
  state = training.create_state(config, source.info.num_classes,
                                source.info.image_shape, mesh,
                                jax.random.key(0))
  train_fn, _ = training.trainer._compiled_steps(mesh, 0.0)  # pylint: disable=protected-access
  batch = next(data.train_iterator(source, config.data, global_batch_size=bs,
                                   seed=0))
  gbatch = training.to_global(batch, mesh)
  key = jax.random.key(1)

  def step():
    nonlocal state
    state, metrics = train_fn(state, gbatch, key)
    jax.block_until_ready(metrics)

  for _ in range(5):
    step()
  step_s = _median_time(step, 50)

  # A rank store of random rankings for every train image.
  workdir = tempfile.mkdtemp()
  store = data.RankStore(workdir)
  for split in ("train", "test"):
    n = source.info.num_examples[split]
    maps = np.random.default_rng(0).random((n, *source.info.image_shape))
    store.write_shard("random", split, 0, 1, np.arange(n),
                      np.asarray(rank(maps.astype(np.float32))))
  fill = data.channel_mean(source)

  num = config.train.num_steps
  plain_s = _batch_time(lambda: data.train_iterator(
      source, config.data, global_batch_size=bs, seed=0), num)
  rows = [("plain pipeline", plain_s, None)]
  for fill_name in ("channel_mean", "noisy_linear"):
    degraded = data.DegradedSource(
        source, store, estimator="random", mode="roar", threshold=0.5,
        fill=fill_name, channel_mean=fill, seed=0)
    t = _batch_time(lambda: data.train_iterator(
        degraded, config.data, global_batch_size=bs, seed=0), num)
    rows.append((f"on the fly, {fill_name}", t, (t - plain_s) / step_s))

  print(f"toy config, {num} training batches of {bs}")
  print(f"toy train step (batch {bs}, {jax.device_count()} device(s), "
        f"{jax.devices()[0].platform}): {1e3 * step_s:.2f} ms")
  print(f"{'input pipeline':32s} {'ms/batch':>9s} {'extra / train step':>19s}")
  for name, t, ratio in rows:
    extra = "" if ratio is None else f"{100 * ratio:18.1f}%"
    print(f"{name:32s} {1e3 * t:9.2f} {extra}")
  ratio = rows[1][2]
  print(f"channel_mean on the fly costs {100 * ratio:.1f}% of a train step "
        f"(target <= 10%): {'met' if ratio <= 0.10 else 'NOT met'}")


if __name__ == "__main__":
  main()
