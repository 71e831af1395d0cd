r"""SRG, infidelity, sensitivity and faithfulness correlation vs their peers.

  python bench/metrics_peers.py [--images 64] [--quick]

A SmallCNN (width 16, 10 classes, random init with small random biases) as
the project's Flax model and as its PyTorch twin (bench/torch_twins.py,
logits checked equal), random 32x32x3 uint8 images normalized with mean 0.5
and std 0.25, and the gradient maps of the predicted class (ours, in JAX;
the twin's autograd gradient is Captum's explanation function). In one run,
each metric with its defaults against its peer on the same model and maps:

- infidelity (10 Gaussian draws): Captum's `infidelity`, its perturb_func
  returning our draws;
- sensitivity-max (10 uniform draws; -avg is the same work): Captum's
  `sensitivity_max`, its perturb_func returning our draws;
- faithfulness correlation (100 subsets of 32 values): Quantus's
  `FaithfulnessCorrelation` (its own subsets, its 'black' baseline);
- SRG, black fill, K = 16 steps: Quantus's `PixelFlipping` (16 steps of 64
  values, 'black') run twice, with the maps and with max + 1 - map (the
  least relevant first), the two curves SRG subtracts.

For each: images/s of ours and of the peer, and our time against the bare
jitted forwards (gradients for sensitivity) the metric needs, the same model
in chunks of 512 inputs as ours: the first ratio is the peer's time over
ours, the second the bare forwards' time over ours (1.0: as fast as the
model's forwards alone). Ours and the bare calls are timed after a first,
compiling call, alternately REPEATS times, the fastest of each kept (a
loaded machine then slows both alike). --quick: 16 images.

--gradients: the limit of sensitivity on each side, the bare input gradient
of a class on the same batches of 64, 256 and 512 images: XLA's as the
bench computes it (vmap of per-image gradients), XLA's of the summed logits
(torch's formulation) and torch's autograd (Captum's explanation function),
in images/s and in CPU-milliseconds per image (every thread of the process:
a side that keeps one core busy where the other keeps two shows it).
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.modules["tensorflow"] = None  # Quantus then takes the torch path alone.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from roar_jax import models  # noqa: E402
from roar_jax import saliency  # noqa: E402
from roar_jax.benchmark.roar import faithfulness  # noqa: E402
from roar_jax.benchmark.roar import infidelity  # noqa: E402
from roar_jax.benchmark.roar import metric_draws  # noqa: E402
from roar_jax.benchmark.roar import metric_options  # noqa: E402
from roar_jax.benchmark.roar import metric_registry  # noqa: E402
from roar_jax.benchmark.roar import sensitivity  # noqa: E402
from roar_jax.benchmark.roar import srg  # noqa: E402
# pylint: enable=g-import-not-at-top,wrong-import-position

MEAN, STD, CHUNK, SEED, REPEATS = 0.5, 0.25, 512, 0, 3
OPTIONS = metric_options.Options(steps=16, fill="black", batch_size=CHUNK)


def timed(fn):
  start = time.perf_counter()
  out = fn()
  return time.perf_counter() - start, out


def cpu_timed(fn) -> tuple[float, float]:
  """(wall s, CPU s of every thread of this process) of one call."""
  wall, cpu = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - wall, time.process_time() - cpu


def setup(n: int):
  """(uint8 images, normalized x, targets, maps, logits, gradient, twin)."""
  import torch  # Deferred: torch is a bench-only dependency.
  from bench import torch_twins
  rng = np.random.default_rng(SEED)
  images = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
  x = ((images / 255.0 - MEAN) / STD).astype(np.float32)
  module = models.SmallCNN(10, width=16)
  params = jax.tree.map(np.asarray, module.init(
      jax.random.key(SEED), x[:1])["params"])
  for leaf in params.values():
    leaf["bias"] = (rng.normal(size=leaf["bias"].shape) * 0.1).astype(
        np.float32)
  logits = jax.tree_util.Partial(
      lambda v: module.apply({"params": params}, v))
  gradient = jax.jit(lambda v, t: jax.vmap(lambda u, c: jax.grad(
      lambda w: logits(w[None])[0, c])(u))(v, t))
  targets = np.asarray(jnp.argmax(logits(x), -1), np.int32)
  maps = np.asarray(gradient(x, targets))
  twin = torch_twins.small_cnn(params).eval()
  with torch.no_grad():
    gap = np.abs(twin(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
                 - np.asarray(logits(x))).max()
  print(f"{n} random images 32x32x3, SmallCNN width 16; JAX on "
        f"{jax.devices()[0].platform}; torch {torch.__version__} on CPU "
        f"({torch.get_num_threads()} threads); |logits difference| "
        f"{gap:.1e}")
  assert gap < 1e-3
  return images, x, targets, maps, logits, gradient, twin


def bare_call(fn, x, total: int):
  """A call of `total` inputs through `fn` in chunks of CHUNK."""
  chunk = jnp.asarray(np.resize(x, (min(CHUNK, total),) + x.shape[1:]))
  t = jnp.zeros(len(chunk), jnp.int32)
  calls = -(-total // len(chunk))
  return lambda: [jax.block_until_ready(fn(chunk, t)) for _ in range(calls)]


def ours_and_bare(ours, bare) -> tuple[float, float]:
  """The fastest of REPEATS alternate timings of each (compiled first)."""
  ours(), bare()
  times = [(timed(ours)[0], timed(bare)[0]) for _ in range(REPEATS)]
  return min(t[0] for t in times), min(t[1] for t in times)


def nchw(a):
  import torch  # Deferred: torch is a bench-only dependency.
  return torch.as_tensor(np.ascontiguousarray(np.moveaxis(a, -1, -3)))


def run_infidelity(x, targets, maps, logits, twin):
  """(ours, Captum s, forwards)."""
  import captum.metrics  # Deferred: a bench-only dependency.
  import torch
  n, s = len(x), OPTIONS.infidelity_samples
  keys = metric_draws.image_keys(SEED, metric_draws.INFIDELITY_STREAM,
                                 np.arange(n))
  ours = (lambda: infidelity.from_terms(infidelity.terms(
      logits, x, maps, targets, keys, samples=s,
      std=OPTIONS.infidelity_noise_std, batch_size=CHUNK)))
  noise = nchw(np.asarray(infidelity.perturbations(
      keys, jnp.arange(s, dtype=jnp.uint32), x.shape[1:],
      OPTIONS.infidelity_noise_std)).reshape((n * s,) + x.shape[1:]))
  xt, mt, tt = nchw(x), nchw(maps), torch.as_tensor(targets.astype(np.int64))
  peer, _ = timed(lambda: captum.metrics.infidelity(
      twin, lambda inputs: (noise, inputs - noise), xt, mt, target=tt,
      n_perturb_samples=s))
  return ours, peer, n * (s + 1)


def torch_gradient(twin):
  """Captum's explanation function: the twin's gradient of the target."""
  import torch  # Deferred: a bench-only dependency.

  def explain(inputs, target):
    v = (inputs[0] if isinstance(inputs, tuple) else inputs).clone()
    t = torch.as_tensor(np.array(target)).reshape(-1, 1)
    with torch.enable_grad():  # Captum calls it under torch.no_grad.
      v.requires_grad_()
      (g,) = torch.autograd.grad(twin(v).gather(1, t).sum(), v)
    return (g,) if isinstance(inputs, tuple) else g
  return explain


def run_sensitivity(x, targets, maps, gradient, twin):
  """(ours, Captum s, gradients)."""
  import captum.metrics  # Deferred: a bench-only dependency.
  import torch
  n, s = len(x), OPTIONS.sensitivity_samples
  keys = metric_draws.image_keys(SEED, metric_draws.SENSITIVITY_STREAM,
                                 np.arange(n))
  maps_fn = lambda v, t, i: gradient(jnp.asarray(v), jnp.asarray(t))
  ours = (lambda: sensitivity.ratios(
      maps_fn, x, maps, targets, np.arange(n), keys, samples=s,
      radius=OPTIONS.sensitivity_radius, batch_size=CHUNK).max(1))
  moved = nchw(np.asarray(sensitivity.perturbed_inputs(
      jnp.asarray(x), jnp.float32(OPTIONS.sensitivity_radius), keys,
      jnp.arange(s, dtype=jnp.uint32))))
  peer, _ = timed(lambda: captum.metrics.sensitivity_max(
      torch_gradient(twin), nchw(x), perturb_func=lambda inputs, r: moved,
      n_perturb_samples=s, target=torch.as_tensor(targets.astype(np.int64))))
  return ours, peer, n * (s + 1)


def run_faithfulness(x, targets, maps, logits, twin):
  """(ours, Quantus s, forwards)."""
  import quantus  # Deferred: a bench-only dependency.
  n, runs, size = len(x), OPTIONS.faithfulness_runs, x.shape[1]
  keys = metric_draws.image_keys(SEED, metric_draws.FAITHFULNESS_STREAM,
                                 np.arange(n))
  ours = (lambda: faithfulness.pearson(faithfulness.terms(
      logits, x, maps, targets, keys, runs=runs, size=size,
      baseline="black", batch_size=CHUNK)))
  metric = quantus.FaithfulnessCorrelation(
      nr_runs=runs, subset_size=size, perturb_baseline="black",
      return_aggregate=False, disable_warnings=True)
  peer, _ = timed(lambda: metric(
      model=twin, x_batch=nchw(x).numpy(), y_batch=targets.astype(np.int64),
      a_batch=nchw(maps).numpy(), channel_first=True, device="cpu",
      batch_size=n))
  return ours, peer, n * (runs + 1)


def run_srg(images, x, targets, maps, logits, twin):
  """(ours, Quantus s, forwards): SRG black vs PixelFlipping twice."""
  import quantus  # Deferred: a bench-only dependency.
  n = len(x)
  levels = np.asarray(saliency.rank(maps))
  batch = metric_registry.Batch(
      "gradient", images, targets, np.arange(n), logits, OPTIONS, None,
      levels=levels, mean=(MEAN,), std=(STD,), seed=SEED)
  ours = (lambda: srg.gain_curves(
      srg.occlusion_curves(batch, "black"), OPTIONS.steps))
  pf = quantus.PixelFlipping(features_in_step=32 * 32 // 16,
                             perturb_baseline="black", normalise=False,
                             abs=False, disable_warnings=True,
                             return_aggregate=False)
  a = nchw(maps).numpy()
  common = dict(model=twin, x_batch=nchw(x).numpy(),
                y_batch=targets.astype(np.int64), channel_first=True,
                device="cpu", batch_size=n)
  peer, _ = timed(lambda: (pf(a_batch=a, **common),
                           pf(a_batch=a.max() + 1.0 - a, **common)))
  return ours, peer, n * 2 * len(srg.inner_levels(OPTIONS.steps))


def gradient_limits(x, logits, gradient, twin):
  """Prints the bare input gradients of XLA and torch on the same batches."""
  import torch  # Deferred: a bench-only dependency.
  summed = jax.jit(lambda v, t: jax.grad(lambda w: jnp.take_along_axis(
      logits(w), t[:, None], -1).sum())(v))
  explain = torch_gradient(twin)
  print(f"{'gradient batch':16s}{'XLA vmap':>22s}{'XLA summed':>22s}"
        f"{'torch':>22s}   (img/s, CPU ms/img)")
  for b in (64, 256, 512):
    v = np.resize(x, (b,) + x.shape[1:])
    t = np.arange(b, dtype=np.int32) % 10
    vj, tj, vt = jnp.asarray(v), jnp.asarray(t), nchw(v)
    calls = [lambda: jax.block_until_ready(gradient(vj, tj)),
             lambda: jax.block_until_ready(summed(vj, tj)),
             lambda: explain(vt, t.astype(np.int64))]
    for call in calls:
      call()
    times = [[cpu_timed(call) for call in calls] for _ in range(REPEATS)]
    cells = "".join(
        f"{b / min(r[i][0] for r in times):12.0f}"
        f"{1e3 * min(r[i][1] for r in times) / b:10.2f}"
        for i in range(len(calls)))
    print(f"{b:<16d}{cells}")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--images", type=int, default=64)
  parser.add_argument("--quick", action="store_true", help="16 images")
  parser.add_argument("--gradients", action="store_true",
                      help="only the bare gradients of XLA and torch")
  args = parser.parse_args()
  n = 16 if args.quick else args.images
  images, x, targets, maps, logits, gradient, twin = setup(n)
  if args.gradients:
    gradient_limits(x, logits, gradient, twin)
    return
  forward = jax.jit(lambda v, t: logits(v))
  rows = [("infidelity", "Captum", forward,
           run_infidelity(x, targets, maps, logits, twin)),
          ("sensitivity_max", "Captum", gradient,
           run_sensitivity(x, targets, maps, gradient, twin)),
          ("faithfulness_corr.", "Quantus", forward,
           run_faithfulness(x, targets, maps, logits, twin)),
          ("srg_black", "Quantus PF x2", forward,
           run_srg(images, x, targets, maps, logits, twin))]
  print(f"{'metric':20s}{'ours img/s':>11s}{'peer':>15s}{'peer img/s':>11s}"
        f"{'peer/ours':>10s}{'inputs':>8s}{'bare s':>8s}{'bare/ours':>10s}")
  for name, peer_name, fn, (ours, peer, inputs) in rows:
    ours, bare = ours_and_bare(ours, bare_call(fn, x, inputs))
    print(f"{name:20s}{n / ours:11.1f}{peer_name:>15s}{n / peer:11.1f}"
          f"{peer / ours:9.1f}x{inputs:8d}{bare:8.3f}{bare / ours:10.2f}")
  print("inputs: the model inputs (forwards; gradients for sensitivity) "
        "the metric needs; bare: their time as bare jitted calls of 512.")


if __name__ == "__main__":
  main()
