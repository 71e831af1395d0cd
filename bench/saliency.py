"""Saliency speed: shared noise ensembles vs one at a time, the original code's
loop, and Captum, side by side in one run.

For the small CNN and ResNet-18 (CIFAR stem) at 32x32, batch 32, J = 15, it
prints images/s per task and these throughput ratios (> 1: ours is faster):

  (a) one sg. ensemble alone / all three ensembles in one call
      (cost of asking for all three; target: all three take at most 1.3x)
  (b) all three ensembles in one call / the original ROAR code's way: one
      image at a time, noise samples in a Python loop, SG, SG-SQ and VarGrad
      each computed on its own (target >= 3)
  (c) vs Captum (when torch and captum are installed): all three ensembles /
      NoiseTunnel smoothgrad + smoothgrad_sq + vargrad (three calls), target
      >= 3; integrated gradients (25 steps) / Captum IntegratedGradients,
      target >= 1. Also the plain per-gradient throughput of both (one batched
      input gradient), so that sharing and raw speed can be told apart.

The torch models (bench/torch_twins.py) are the same architectures with the
Flax weights copied in; the script checks that logits and input gradients
agree before timing. Tasks are timed in interleaved rounds (median, or
--stat=min, of --repeats) so that load on a shared machine affects all alike.

  pip install torch==2.13.0 captum   # optional, for (c); CPU build
  python bench/saliency.py [--models cnn,resnet18] [--repeats 3]
"""

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from roar_jax import models
from roar_jax.saliency import explainable
from roar_jax.saliency import explaining as api
from roar_jax.saliency import inputs as inputs_lib
from roar_jax.saliency import lowering
# pylint: enable=g-import-not-at-top,wrong-import-position

ENSEMBLES = ("sg.gradient", "sg_sq.gradient", "var.gradient")


# ---------------------------------------------------------------------------
# Models: Flax, and the same function in torch.


def _randomize_batch_norm(variables, rng):
  """BatchNorm with non-trivial statistics and scales (zero-init undone)."""
  def visit(tree, stats):
    for name, sub in tree.items():
      if isinstance(sub, dict) and "scale" in sub and "bias" in sub:
        sub["scale"] = rng.uniform(0.3, 0.8, sub["scale"].shape).astype(
            np.float32)
        sub["bias"] = rng.normal(0, 0.05, sub["bias"].shape).astype(
            np.float32)
        stats[name]["mean"] = rng.normal(0, 0.1, stats[name]["mean"].shape
                                         ).astype(np.float32)
        stats[name]["var"] = rng.uniform(0.5, 1.5, stats[name]["var"].shape
                                         ).astype(np.float32)
      elif isinstance(sub, dict) and name in stats:
        visit(sub, stats[name])
  variables = jax.tree.map(np.asarray, variables)
  variables = {k: _to_dict(v) for k, v in variables.items()}
  if "batch_stats" in variables:
    visit(variables["params"], variables["batch_stats"])
  return variables


def _to_dict(tree):
  """A copy of `tree` as plain nested dicts of NumPy arrays (mutable)."""
  if hasattr(tree, "items"):
    return {k: _to_dict(v) for k, v in tree.items()}
  return np.array(tree)


def build_flax(name: str):
  """The Flax model ("cnn": SmallCNN, else ResNet-18) and its variables."""
  if name == "cnn":
    module = models.SmallCNN(10)
  else:
    module = models.ResNet18(10, stem="cifar")
  variables = jax.jit(module.init)(jax.random.key(0),
                                   jnp.zeros((1, 32, 32, 3)))
  variables = _randomize_batch_norm(variables, np.random.default_rng(0))
  return module, variables


def build_torch(name: str, variables):
  """The same network in torch (NCHW), with the Flax weights copied in."""
  # Imported here: torch is optional (bench/lecture.py catches the
  # ImportError). `bench` is found from the checkout root on sys.path.
  from bench import torch_twins  # pylint: disable=g-import-not-at-top
  return torch_twins.build(name, variables)


# ---------------------------------------------------------------------------
# The tasks: name -> (images per call, function that computes it).


def naive_roar_way(grad1, logits1, images, num_samples, noise_scale, seed=0):
  """The original code's loop: per image, per method, per noise sample.

  One image at a time (batch 1), the predicted class from its own forward
  pass, noise samples in a Python loop, and SG, SG-SQ and VarGrad each
  computed on its own (their own noise, their own J gradients).
  """
  rng = np.random.default_rng(seed)
  out = {m: [] for m in ENSEMBLES}
  for x in images:
    x = x[None]
    sigma = noise_scale * (x.max() - x.min())
    for method in ENSEMBLES:
      target = np.asarray(jnp.argmax(logits1(x), axis=-1)).astype(np.int32)
      grads = []
      for _ in range(num_samples):
        noisy = x + rng.normal(0, sigma, x.shape).astype(np.float32)
        grads.append(np.asarray(grad1(noisy, target)))
      grads = np.stack(grads)
      if method == "sg.gradient":
        out[method].append(grads.mean(0))
      elif method == "sg_sq.gradient":
        out[method].append((grads**2).mean(0))
      else:
        out[method].append(grads.var(0))
  return out


def ours_tasks(model, x, targets, key, num_samples: int) -> dict:
  """Our tasks; each computes what its name says for the whole batch."""
  batch = len(x)
  opts = dict(num_samples=num_samples, noise_scale=0.15)
  ready = jax.block_until_ready
  return {
      "ours: plain gradient (batch 32, one call)": (batch, lambda: ready(
          api.explain(model, x, method="gradient", key=key, target=targets,
                      chunk_size=batch))),
      "ours: sg.gradient alone": (batch, lambda: ready(api.explain_all(
          model, x, methods=ENSEMBLES[:1], key=key, **opts))),
      "ours: sg + sg_sq + var (one call)": (batch, lambda: ready(
          api.explain_all(model, x, methods=ENSEMBLES, key=key, **opts))),
      "ours: integrated_gradients (25 steps)": (batch, lambda: ready(
          api.explain(model, x, method="integrated_gradients", key=key,
                      ig_steps=25, baseline=0.0))),
  }


def original_roar_task(model, x, name: str, args) -> dict:
  """The original code's way, with the same jitted gradient (batch 1).

  Its images/s does not depend on the image count, so it is timed on fewer
  images than the batch (--naive-images; 32 for the CNN, 8 for ResNet-18).
  """
  logits_fn = lowering.fast_pooling(model.logits)
  grad1 = jax.jit(lambda xi, t: inputs_lib.target_gradient(logits_fn, xi, t))
  logits1 = jax.jit(model.logits)
  naive_n = min(args.batch, args.naive_images or (32 if name == "cnn" else 8))
  return {f"original ROAR way (timed on {naive_n} images)": (
      naive_n, lambda: naive_roar_way(grad1, logits1, x[:naive_n],
                                      args.num_samples, 0.15))}


def torch_inputs(x, targets):
  """The images (NCHW) and target classes as torch tensors."""
  import torch  # pylint: disable=g-import-not-at-top
  xt = torch.tensor(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))
  return xt, torch.tensor(targets.astype(np.int64))


def captum_tasks(net, x, xt, tt, num_samples: int) -> dict:
  """Captum's counterparts of our tasks, on the torch twin `net`."""
  from captum import attr  # pylint: disable=g-import-not-at-top
  batch = len(x)
  sal = attr.Saliency(net)
  nt = attr.NoiseTunnel(sal)
  # Captum's stdevs is absolute: 0.15 x the images' mean value range.
  stdev = float(0.15 * np.mean(x.max(axis=(1, 2, 3)) -
                               x.min(axis=(1, 2, 3))))
  ig = attr.IntegratedGradients(net)

  def captum_three():
    for kind in ("smoothgrad", "smoothgrad_sq", "vargrad"):
      nt.attribute(xt, nt_type=kind, nt_samples=num_samples, stdevs=stdev,
                   target=tt, abs=False)

  return {
      "captum: Saliency (batch 32)": (batch, lambda: sal.attribute(
          xt, target=tt, abs=False)),
      "captum: NoiseTunnel sg + sg_sq + vargrad (3 calls)": (
          batch, captum_three),
      "captum: IntegratedGradients (25 steps)": (batch, lambda: ig.attribute(
          xt, target=tt, n_steps=25)),
  }


# ---------------------------------------------------------------------------
# Checks that the torch twin computes the same function, and timing.


def logits_check(net, xt, module, variables, x) -> dict:
  """Relative difference of the torch and Flax logits over the batch."""
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    tl = net(xt).numpy()
  fl = np.asarray(module.apply(variables, x))
  return {"logits max-abs error / max-abs": float(
      np.abs(tl - fl).max() / np.abs(fl).max())}


def gradient_checks(net, xt, tt, model, x, targets, key) -> dict:
  """Per-image relative difference of Captum's and our input gradients."""
  from captum import attr  # pylint: disable=g-import-not-at-top
  tg = attr.Saliency(net).attribute(xt, target=tt, abs=False)
  tg = tg.numpy().transpose(0, 2, 3, 1)
  fg = np.asarray(api.explain(model, x, method="gradient", key=key,
                              target=targets))
  batch = len(x)
  err = (np.abs(tg - fg).reshape(batch, -1).max(1) /
         np.abs(fg).reshape(batch, -1).max(1))
  return {
      "input gradient max-abs error / max-abs, median image": float(
          np.median(err)),
      # A ReLU input within rounding of 0 can switch sides between frameworks
      # and change one image's gradient locally; count such images.
      "images with input-gradient error > 1e-4": int((err > 1e-4).sum()),
  }


def _timed(fn):
  """Wall-clock seconds of one call of `fn`."""
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def time_tasks(tasks: dict, repeats: int, stat: str) -> dict:
  """Images/s of each task, over interleaved rounds.

  Args:
    tasks: name -> (images per call, function).
    repeats: the number of rounds; each round calls every task once, so that
      load on a shared machine affects all tasks alike.
    stat: "min" or "median" of each task's times over the rounds.

  Returns:
    name -> images/s, in the order of `tasks`.
  """
  for _, fn in tasks.values():
    fn()  # Warm up (compiles).
  times = {t: [] for t in tasks}
  for _ in range(repeats):
    for task, (_, fn) in tasks.items():
      times[task].append(_timed(fn))
  stat_fn = np.min if stat == "min" else np.median
  return {t: tasks[t][0] / float(stat_fn(times[t])) for t in tasks}


def run_model(name: str, args, have_torch: bool) -> dict:
  """Checks and times every task on one model.

  Args:
    name: "cnn" or "resnet18".
    args: the parsed command line.
    have_torch: whether torch and captum are installed; if so, the Captum
      tasks are timed too, after the torch twin's agreement checks.

  Returns:
    {"rate": task -> images/s, "checks": check -> value}.
  """
  module, variables = build_flax(name)
  model = explainable(module, variables)
  rng = np.random.default_rng(1)
  x = rng.uniform(0, 1, (args.batch, 32, 32, 3)).astype(np.float32)
  key = jax.random.key(0)
  targets = np.asarray(jnp.argmax(jax.jit(module.apply)(variables, x), -1))
  tasks = ours_tasks(model, x, targets, key, args.num_samples)
  tasks.update(original_roar_task(model, x, name, args))
  checks = {}
  if have_torch:
    net = build_torch(name, variables)
    xt, tt = torch_inputs(x, targets)
    checks.update(logits_check(net, xt, module, variables, x))
    checks.update(gradient_checks(net, xt, tt, model, x, targets, key))
    tasks.update(captum_tasks(net, x, xt, tt, args.num_samples))
  return {"rate": time_tasks(tasks, args.repeats, args.stat),
          "checks": checks}


def ratios(rate: dict) -> dict:
  """Throughput ratios (a), (b), (c) from images/s per task (> 1: ours wins)."""
  get = lambda prefix: next(v for k, v in rate.items() if k.startswith(prefix))
  out = {
      "(a) all three in one call vs sg alone (time ratio, target <= 1.3)":
          get("ours: sg.gradient alone") / get("ours: sg + sg_sq + var"),
      "(b) all three vs original ROAR way (target >= 3)":
          get("ours: sg + sg_sq + var") / get("original ROAR way"),
  }
  if any(k.startswith("captum") for k in rate):
    out.update({
        "(c) all three vs Captum NoiseTunnel x3 (target >= 3)":
            get("ours: sg + sg_sq + var") / get("captum: NoiseTunnel"),
        "(c) integrated gradients vs Captum (target >= 1)":
            get("ours: integrated_gradients") /
            get("captum: IntegratedGradients"),
        "raw: one batched input gradient, JAX / torch":
            get("ours: plain gradient (") / get("captum: Saliency"),
    })
  return out


def parse_args():
  """The command line (see the module docstring)."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default="cnn,resnet18")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--num-samples", type=int, default=15)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--naive-images", type=int, default=0,
                      help="images the original-code loop is timed on "
                      "(default 32 for the CNN, 8 for ResNet-18; its "
                      "images/s does not depend on the count)")
  parser.add_argument("--stat", choices=("median", "min"), default="median",
                      help="per-task time over the rounds (min is the "
                      "better estimate on a busy machine)")
  parser.add_argument("--no-torch", action="store_true")
  parser.add_argument("--json", default="", help="also write results here")
  return parser.parse_args()


def torch_available(no_torch: bool) -> bool:
  """Whether the Captum comparisons run (torch and captum import)."""
  if no_torch:
    return False
  try:
    import captum  # pylint: disable=g-import-not-at-top,unused-import
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    print("torch/captum not installed: the Captum comparisons (c) are "
          "skipped (pip install torch==2.13.0 captum)")
    return False
  return True


def print_setup(args, have_torch: bool) -> None:
  """One line: the JAX (and torch) build, CPUs and the run's settings."""
  torch_line = ""
  if have_torch:
    import torch  # pylint: disable=g-import-not-at-top
    torch_line = (f"; torch {torch.__version__}, {torch.get_num_threads()} "
                  "threads")
  print(f"jax {jax.__version__} on {jax.default_backend()} "
        f"({os.cpu_count()} CPUs); batch {args.batch}, J = "
        f"{args.num_samples}, {args.stat} of {args.repeats} interleaved "
        "rounds" + torch_line)


def print_result(name: str, result: dict) -> None:
  """The model's load averages, checks, images/s per task and ratios."""
  print(f"\n== {name} == (1-min load average {result['load_average'][0]:.1f}"
        f" at start, {result['load_average'][1]:.1f} at end, "
        f"{os.cpu_count()} CPUs)")
  for check, value in result["checks"].items():
    print(f"  check: {check}: {value:.2e}" if isinstance(value, float)
          else f"  check: {check}: {value}")
  for task, value in result["rate"].items():
    print(f"  {task:58s} {value:9.2f} img/s")
  for label, value in result["ratios"].items():
    print(f"  {label:66s} {value:6.2f}x")
  sys.stdout.flush()


def main():
  args = parse_args()
  have_torch = torch_available(args.no_torch)
  print_setup(args, have_torch)
  results = {}
  for name in args.models.split(","):
    load = os.getloadavg()[0]
    result = run_model(name, args, have_torch)
    # Torch's OpenMP threads slow down far more than XLA's under CPU
    # contention: read the Captum ratios with the machine's load beside them.
    result["load_average"] = [load, os.getloadavg()[0]]
    result["ratios"] = ratios(result["rate"])
    results[name] = result
    print_result(name, result)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
