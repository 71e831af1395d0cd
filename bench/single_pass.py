"""Single-pass saliency through `saliency.explain` vs a bare input gradient.

Small CNN (toy config) and ResNet-18 (CIFAR stem), random weights, 32x32,
batch 32: `gradient`, `gradient_x_input`, `guided_backprop`, `deeplift` (two
passes) via `explain` vs a bare `jax.jit(jax.grad(lambda x: jnp.sum(logits(
x)[arange, target])))` (same model function, images, classes), which
`gradient` must equal. Median of --repeats interleaved rounds; ratio = bare
time / method time, target >= 0.95 (deeplift: vs 2x bare). Row `bare, fast
pooling`: what explain's max-pooling lowering (lowering.py) alone changes.

--xla-study times the bare gradient and `gradient` in fresh processes under
XLA_FLAGS: none (baseline), --xla_cpu_enable_fast_math=true,
--xla_cpu_multi_thread_eigen=false, --xla_cpu_use_thunk_runtime=false,
--xla_cpu_use_onednn=true (names found in jaxlib 0.10.2's libjax_common.so
by `strings | grep xla_cpu_`; a flag XLA rejects is reported), then in this
process at batch 16/32/64 and with NCHW input transposed inside the jit.

  python bench/single_pass.py [--models cnn,resnet18] [--repeats 5]
      [--batch 32] [--json PATH] [--xla-study]
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from roar_jax import models
from roar_jax import saliency
from roar_jax.config import defaults as config_lib

# Method -> model passes per image (DeepLIFT runs the image and its reference).
METHODS = {"gradient": 1, "gradient_x_input": 1, "guided_backprop": 1,
           "deeplift": 2}
TARGET = 0.95
XLA_SETTINGS = ("", "--xla_cpu_enable_fast_math=true",
                "--xla_cpu_multi_thread_eigen=false",
                "--xla_cpu_use_thunk_runtime=false",
                "--xla_cpu_use_onednn=true")


def build(name: str) -> saliency.Model:
  """'cnn' (the toy config's) or 'resnet18' (CIFAR stem), random weights."""
  toy = config_lib.load("toy")
  module = (models.get_model(toy.model, toy.data.toy.num_classes)
            if name == "cnn" else models.get_model(
                {"name": "resnet18", "resnet18": {"stem": "cifar"}}, 10))
  variables = jax.jit(module.init)(jax.random.key(0),
                                   jnp.zeros((1, 32, 32, 3)))
  return saliency.explainable(module, variables)


def bare_gradient(layout: str = "NHWC", fast: bool = False):
  """The bare gradient of the explained logits' sum.

  Args:
    layout: 'NHWC', or 'NCHW' (transposed inside the jitted function).
    fast: differentiate `saliency.fast_pooling(logits)` instead.

  Returns:
    jitted (model, images, targets) -> d/d images. The model is an argument,
    as in `explain`: its weights are buffers, not folded constants.
  """
  def loss(model, x, target):
    if layout == "NCHW":
      x = jnp.transpose(x, (0, 2, 3, 1))
    logits = saliency.fast_pooling(model.logits) if fast else model.logits
    return jnp.sum(logits(x)[jnp.arange(x.shape[0]), target])
  return jax.jit(jax.grad(loss, argnums=1))


def inputs(model, batch: int):
  """Random images [B, 32, 32, 3] and their predicted classes, on device."""
  x = np.random.default_rng(1).normal(size=(batch, 32, 32, 3))
  x = jnp.asarray(x.astype(np.float32))
  return x, jnp.argmax(jax.jit(model.logits)(x), -1).astype(jnp.int32)


def median_times(tasks: dict, repeats: int) -> dict:
  """Times tasks in interleaved rounds, so drifting load hits all alike.

  Args:
    tasks: {name: function of no arguments}; each is called once to compile.
    repeats: rounds; each round calls every task once.

  Returns:
    {name: median seconds}.
  """
  for fn in tasks.values():
    jax.block_until_ready(fn())
  times = {name: [] for name in tasks}
  for _ in range(repeats):
    for name, fn in tasks.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def method_rows(name: str, args) -> list:
  """Checks `gradient` against the bare gradient, times and prints all.

  Args:
    name: the model ('cnn' or 'resnet18').
    args: the parsed command line (batch, repeats).

  Returns:
    One dict per task: time, images/s, ratios and verdict.
  """
  model = build(name)
  x, t = inputs(model, args.batch)
  bare, bare_fast = bare_gradient(), bare_gradient(fast=True)
  ours = np.asarray(saliency.explain(model, x, method="gradient", target=t))
  ref = np.asarray(bare(model, x, t))
  diff, scale = float(np.abs(ours - ref).max()), float(np.abs(ref).max())
  print(f"{name}: gradient max abs diff {diff:.2e} (max abs {scale:.2e})")
  assert diff <= 1e-4 * max(scale, 1e-6), (diff, scale)
  tasks = {"bare jax.grad": lambda: bare(model, x, t),
           "bare, fast pooling (reference)": lambda: bare_fast(model, x, t)}
  for method in METHODS:  # Only deeplift reads the baseline (none declared).
    tasks[method] = lambda m=method: saliency.explain(
        model, x, method=m, target=t, baseline=0.0)
  rows, seconds = [], median_times(tasks, args.repeats)
  for task, s in seconds.items():
    passes, ratio = METHODS.get(task, 1), seconds["bare jax.grad"] / s
    rows.append({"model": name, "method": task, "passes": passes,
                 "ms": 1e3 * s, "images_per_s": args.batch / s,
                 "ratio": ratio, "ratio_per_pass": passes * ratio,
                 "met": passes * ratio >= TARGET if task in METHODS else None})
  print(f"\n| model | method | passes | ms/batch | images/s | bare/method | "
        f"passes x bare/method | target >= {TARGET} |\n" + "|---" * 8 + "|")
  for r in rows:
    verdict = {None: "-", True: "met", False: "NOT met"}[r["met"]]
    per_pass = f"{r['ratio_per_pass']:.3f}" if r["passes"] > 1 else ""
    print(f"| {r['model']} | {r['method']} | {r['passes']} | {r['ms']:.2f} | "
          f"{r['images_per_s']:.1f} | {r['ratio']:.3f} | {per_pass} | "
          f"{verdict} |")
  return rows


def gradient_rates(model, batch: int, repeats: int, nchw: bool = False):
  """Images/s of the bare gradient ('bare'; 'bare NCHW' too if `nchw`) and
  of explain ('gradient') with chunk_size=batch, so that XLA sees the whole
  batch in one step whatever the default chunking."""
  x, t = inputs(model, batch)
  bare, bare_nchw = bare_gradient(), bare_gradient("NCHW")
  # Transposed outside the timing, as a data loader would hand it over.
  x_nchw = jnp.transpose(x, (0, 3, 1, 2)).block_until_ready()
  tasks = {"bare": lambda: bare(model, x, t),
           "gradient": lambda: saliency.explain(
               model, x, method="gradient", target=t, chunk_size=batch)}
  if nchw:
    tasks["bare NCHW"] = lambda: bare_nchw(model, x_nchw, t)
  return {k: batch / s for k, s in median_times(tasks, repeats).items()}


def xla_study(name: str, args) -> dict:
  """Times the bare gradient and `gradient` under each XLA setting.

  Args:
    name: the model.
    args: the parsed command line.

  Returns:
    {'xla_flags': rows, 'in_process': rows}; a row is {setting, rates}, or
    {setting, rejected: last stderr line} if its process failed.
  """
  flags = []
  for flag in XLA_SETTINGS:  # XLA reads its flags once, at start-up.
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(filter(None, (env.get("XLA_FLAGS"), flag)))
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--xla-worker", name,
         str(args.batch), str(args.repeats)],
        env=env, capture_output=True, text=True, check=False)
    out = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    flags.append({"setting": flag or "baseline (no flags)"})
    if proc.returncode or not out:
      flags[-1]["rejected"] = (proc.stderr.strip().splitlines() or ["?"])[-1]
    else:
      flags[-1]["rates"] = json.loads(out[-1][len("RESULT "):])
  model, batches = build(name), sorted({16, 32, 64, args.batch})
  local = [{"setting": f"batch {b}", "rates": gradient_rates(
      model, b, args.repeats, nchw=b == args.batch)} for b in batches]
  print_study(name, flags, flags[0])
  print_study(name, local, local[batches.index(args.batch)])
  return {"xla_flags": flags, "in_process": local}


def print_study(name: str, rows: list, base: dict) -> None:
  """A markdown table: images/s of each setting and its ratio to `base`
  (the NCHW column to the baseline's NHWC bare gradient)."""
  print(f"\n{name}: images/s (ratio to {base['setting']})\n| setting | bare "
        "| bare, NCHW in jit | explain gradient |\n" + "|---" * 4 + "|")
  refs = base.get("rates", {})  # Empty if the baseline itself failed.
  for r in rows:
    cells = [f"rejected: {r['rejected']}", "", ""] if "rejected" in r else []
    for task in () if cells else ("bare", "bare NCHW", "gradient"):
      rate, ref = r["rates"].get(task), refs.get(task.split()[0])
      ratio = f" ({rate / ref:.3f})" if rate and ref else ""
      cells.append(f"{rate:.1f}{ratio}" if rate else "-")
    print(f"| {r['setting']} | {' | '.join(cells)} |")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default="cnn,resnet18")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--json", default="", help="write the figures here")
  parser.add_argument("--xla-study", action="store_true")
  # A child of xla_study: --xla-worker MODEL BATCH REPEATS -> one JSON line.
  parser.add_argument("--xla-worker", nargs=3, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.xla_worker:
    name, batch, repeats = args.xla_worker
    rates = gradient_rates(build(name), int(batch), int(repeats))
    print("RESULT " + json.dumps(rates))
    return
  # A shared 2-core machine: the load says how far to trust the figures.
  now = datetime.datetime.now(datetime.timezone.utc)
  info = {"date": now.isoformat(timespec="seconds"), "jax": jax.__version__,
          "device": str(jax.devices()[0]), "cpus": os.cpu_count(),
          "load": os.getloadavg(), "batch": args.batch, "repeats": args.repeats}
  print(" ".join(f"{k}: {v}" for k, v in info.items()))
  results = {"info": info}
  for name in args.models.split(","):
    results[name] = (xla_study if args.xla_study else method_rows)(name, args)
  info["load_end"] = os.getloadavg()
  print(f"\nload average at end: {info['load_end']}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
