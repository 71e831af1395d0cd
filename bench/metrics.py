r"""No-retrain metrics against Quantus, on the same model, maps and images.

  python bench/metrics.py [--images 128] [--imputation auto|banded|cg|scipy]

Builds the toy config's small CNN (width 16) with random-init weights twice:
as the project's Flax model and as a PyTorch twin holding the same weights
(checked: equal logits), takes the toy test images and oracle-like maps (the
ground-truth pattern plus noise), and times, in one run:

- ROAD MoRF + LeRF at 10%, ..., 90%: ours (`metrics.curves`, noisy linear
  imputation batched) against Quantus's `ROAD` (MoRF only: run
  once with the maps and once with the reversed maps (max + 1 - a), which
  removes the least relevant first, i.e. LeRF). Quantus's ROAD ranks the
  C*H*W values but its imputation indexes the H*W pixels (an IndexError on
  RGB images), so its perturb_func is wrapped to map value indices to
  pixels; the maps are equal in every channel, so both rank pixels alike;
- deletion + insertion, 16 steps: ours against Quantus's `PixelFlipping`
  (deletion only, 16 steps of 64 pixels, black baseline; its step must
  divide H*W = 1024, so not 20), run once: ours does two curves in the time
  printed, Quantus one.
- `--mode=metrics`-equivalent work (all four curves) against one retrain of
  the toy grid (the toy config's 300 training steps), whose time is measured
  here with the project trainer.

Timings of ours exclude compilation (run once before timing; the compile
time is printed too). Quantus runs on the CPU with torch; ours runs on
whatever JAX runs on.
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from roar_jax import models  # noqa: E402
from roar_jax import saliency  # noqa: E402
from roar_jax.benchmark.roar import metrics  # noqa: E402
from roar_jax.config import defaults as config_lib  # noqa: E402
from roar_jax.data import preprocess  # noqa: E402
from roar_jax.data import sources  # noqa: E402
from roar_jax.data import synthetic  # noqa: E402


def timed(fn):
  start = time.perf_counter()
  out = fn()
  return time.perf_counter() - start, out


def setup(n: int):
  """The toy test images, labels, oracle-like maps and both models.

  Returns:
    (config, source, images, labels, maps, x (normalized), model, twin).
  """
  import torch  # pylint: disable=g-import-not-at-top
  from bench import torch_twins  # pylint: disable=g-import-not-at-top
  config = config_lib.load("toy")
  source = sources.get_source(config.data)
  images, labels = source.arrays("test")
  images, labels = images[:n], labels[:n].astype(np.int64)
  masks = synthetic.toy_masks(config.data.toy, "test")[:n]
  rng = np.random.default_rng(0)
  maps = (masks[..., None] + 0.5 * rng.random(images.shape[:3] + (1,))
          ).astype(np.float32) * np.ones((1, 1, 1, 3), np.float32)
  x = preprocess.normalize(images, config.data)
  width = config.model.small_cnn.width
  module = models.get_model(config.model, 4)
  variables = module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  model = saliency.explainable(module, variables)
  # The same weights in torch, parameters trainable as Quantus expects.
  twin = torch_twins.small_cnn(variables["params"]).eval()
  with torch.no_grad():
    t_logits = twin(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  gap = np.abs(t_logits - np.asarray(model.logits(jnp.asarray(x)))).max()
  print(f"{n} toy test images 32x32x3, small CNN width {width}; JAX on "
        f"{jax.devices()[0].platform} ({jax.device_count()} device(s)); "
        f"torch on CPU; |logits difference| {gap:.1e}")
  assert gap < 1e-3
  return config, source, images, labels, maps, x, model, twin


def time_ours(config, model, images, labels, maps, imputation: str):
  """Our curves, timed after a first (compiling) call.

  Returns:
    ([(name, first call s, timed call s)] for ROAD, deletion+insertion and
     all four curves; (forwards, bare forward s) of the same number of
     model inputs as deletion+insertion).
  """
  n = len(images)
  levels = np.asarray(saliency.rank(maps))  # Pixel granularity.
  road = metrics.Options(names=("road_morf", "road_lerf"),
                         imputation=imputation)
  di = metrics.Options(names=("deletion", "insertion"), steps=16,
                       fill="black")
  every = metrics.Options(imputation=imputation, fill="black")
  kw = dict(mean=config.data.mean, std=config.data.std, fill_value=None)

  def ours(options):
    return metrics.curves(model.logits, images, labels, levels,
                          np.arange(n), options=options, **kw)

  rows = []
  for name, options in (("ROAD MoRF+LeRF", road), ("deletion+insertion", di),
                        ("all four curves", every)):
    first, _ = timed(lambda: ours(options))
    t, _ = timed(lambda: ours(options))
    rows.append((name, first, t))
  # The floor under deletion/insertion: the same number of forwards, bare.
  x = preprocess.normalize(images, config.data)
  forwards = jnp.asarray(np.tile(x, (2 * (di.steps + 1), 1, 1, 1)))
  bare = jax.jit(model.logits)
  bare(forwards).block_until_ready()
  t_bare, _ = timed(lambda: bare(forwards).block_until_ready())
  return rows, (forwards.shape[0], t_bare)


def time_quantus(twin, x, labels, maps):
  """Quantus's ROAD (twice: MoRF, and LeRF by reversed maps) and
  PixelFlipping on the same images and maps; seconds of each."""
  import quantus  # pylint: disable=g-import-not-at-top
  from quantus.functions import perturb_func  # pylint: disable=g-import-not-at-top
  x_nchw = x.transpose(0, 3, 1, 2).copy()
  a_nchw = maps.transpose(0, 3, 1, 2).copy()

  def pixel_imputation(arr, indices, **kwargs):
    # Quantus ranks the C*H*W values but imputes H*W pixels (its
    # noisy_linear_imputation indexes a pixel mask): with the map equal in
    # every channel, the top values are the top pixels' channels.
    return perturb_func.noisy_linear_imputation(
        arr=arr, indices=np.unique(np.asarray(indices) % (32 * 32)),
        **kwargs)

  q_road = quantus.ROAD(percentages=list(range(10, 100, 10)), noise=0.01,
                        normalise=False, abs=False, disable_warnings=True,
                        perturb_func=pixel_imputation)
  common = dict(model=twin, x_batch=x_nchw, y_batch=labels, device="cpu",
                batch_size=len(x))
  tq_morf, _ = timed(lambda: q_road(a_batch=a_nchw, **common))
  reverse = a_nchw.max() + 1.0 - a_nchw  # Least relevant first, positive.
  tq_lerf, _ = timed(lambda: q_road(a_batch=reverse, **common))
  q_pf = quantus.PixelFlipping(features_in_step=32 * 32 // 16,
                               perturb_baseline="black", normalise=False,
                               abs=False, disable_warnings=True)
  tq_pf, _ = timed(lambda: q_pf(a_batch=a_nchw, **common))
  print(f"Quantus {quantus.__version__}")
  return tq_morf, tq_lerf, tq_pf


def print_table(rows, quantus_times, bare):
  """Ours against Quantus, and the targets."""
  tq_morf, tq_lerf, tq_pf = quantus_times
  print(f"{'':24s}{'ours (s)':>10s}{'compile+1st':>13s}{'Quantus (s)':>13s}"
        f"{'ratio':>8s}")
  road_q = tq_morf + tq_lerf
  print(f"{'ROAD MoRF+LeRF':24s}{rows[0][2]:10.2f}{rows[0][1]:13.2f}"
        f"{road_q:13.2f}{road_q / rows[0][2]:7.1f}x   (Quantus: ROAD run "
        f"twice, a and max+1-a: {tq_morf:.2f} + {tq_lerf:.2f} s)")
  print(f"{'deletion+insertion':24s}{rows[1][2]:10.2f}{rows[1][1]:13.2f}"
        f"{tq_pf:13.2f}{tq_pf / rows[1][2]:7.1f}x   (Quantus: PixelFlipping,"
        " deletion only, 16 steps)")
  print(f"{'all four curves':24s}{rows[2][2]:10.2f}{rows[2][1]:13.2f}"
        f"{road_q + tq_pf:13.2f}{(road_q + tq_pf) / rows[2][2]:7.1f}x")
  print(f"bare jax.jit forwards of the deletion+insertion images "
        f"({bare[0]}, one call): {bare[1]:.2f} s, "
        f"{bare[0] / bare[1]:.0f} images/s")
  target = 20.0
  for label, ratio in (("ROAD", road_q / rows[0][2]),
                       ("deletion/insertion", tq_pf / rows[1][2])):
    print(f"{label}: {ratio:.1f}x Quantus (target >= {target:.0f}x): "
          f"{'met' if ratio >= target else 'NOT met'}")


def compare_with_retrain(config, source, seconds_per_image: float):
  """One toy retrain's time against the four curves over the test split."""
  from roar_jax import training  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    t_train, _ = timed(lambda: training.train_and_evaluate(
        config, tmp, source=source))
  num_test = source.info.num_examples["test"]
  full = seconds_per_image * num_test
  print(f"one toy retrain ({config.train.num_steps} steps + test eval): "
        f"{t_train:.1f} s; all four curves for one estimator over the "
        f"{num_test} test images (extrapolated from the timed images): "
        f"{full:.1f} s = {full / t_train:.2f} retrains")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--images", type=int, default=128)
  parser.add_argument("--imputation", default="auto")
  parser.add_argument("--skip_retrain", action="store_true")
  args = parser.parse_args()
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count() or 1)
  config, source, images, labels, maps, x, model, twin = setup(args.images)
  rows, bare = time_ours(config, model, images, labels, maps,
                         args.imputation)
  print_table(rows, time_quantus(twin, x, labels, maps), bare)
  if not args.skip_retrain:
    compare_with_retrain(config, source, rows[2][2] / args.images)


if __name__ == "__main__":
  main()
