"""Perturbation methods' forwards against a bare jitted forward of the model.

For the small CNN (`models.SmallCNN`) and ResNet-18 (CIFAR stem), random
weights, 32x32x3 images, it times side by side, in interleaved rounds:

  (a) bare      `jax.jit(lambda x: module.apply(v, x))` at the batch the
                method's forwards run at, in images/s;
  (b) method    occlusion, RISE, LIME, KernelSHAP (`saliency.explain`, one
                chunk of images per call) and the no-retrain curves
                (`curves.curves`: deletion + insertion under the channel-mean
                fill, ROAD MoRF + LeRF under noisy_linear), in perturbed
                copies/s; copies = the forwards a call evaluates
                (`saliency.gradient_passes` x images; the curves: images x
                curves x points);
  (c) ratio     b / a, the target being >= 0.9;
  (d) trivial   the same call with the model replaced by a trivial function
                (mean over pixels, then a [C, 10] matrix): the time of mask
                generation, copying, host round trips and, for ROAD, the
                imputation. The table splits the method's time into the
                forwards (copies at the bare rate), that overhead, and the
                rest (what running the forwards inside the method costs
                beyond a bare call: scan, fusion, batch shapes).

The forward batch of each method is read from the traced calls (the largest
batch the model is applied to). LIME and KernelSHAP get 49 segments as a
7 x 7 grid (`segments=`): the host segmentation (SLIC) is not part of the
jitted kernels measured here (bench/lecture.py times it with the rest).

  python bench/perturbation.py [--models cnn,resnet18] [--rounds 5]
      [--out PATH] [--quick]
"""

import argparse
import datetime
import json
import os
import statistics
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
from roar_jax.benchmark.roar import curves as curves_lib
from roar_jax.benchmark.roar import metric_options

METHODS = ("occlusion", "rise", "lime", "kernel_shap")
CURVES = {"deletion+insertion": ("deletion", "insertion"),
          "road (noisy_linear)": ("road_morf", "road_lerf")}
TARGET = 0.9
CLASSES = 10
# Forward batch sizes seen while tracing (filled by `_recording`).
_BATCHES: list[int] = []


def build(name: str):
  """(module, variables) of 'cnn' or 'resnet18', random weights."""
  module = (models.SmallCNN(CLASSES) if name == "cnn" else
            models.ResNet18(CLASSES, stem="cifar"))
  variables = jax.jit(module.init)(jax.random.key(0),
                                   jnp.zeros((1, 32, 32, 3)))
  return module, variables


def _recording(logits, x):
  """logits(x), noting the batch it is traced at."""
  _BATCHES.append(int(x.shape[0]))
  return logits(x)


def _trivial(weights, x):
  """A model that costs next to nothing: pixel means times a matrix."""
  return jnp.mean(x, axis=(1, 2)) @ weights


def models_of(module, variables):
  """{'real': the explainable model recording its batches, 'trivial': ...}."""
  real = saliency.explainable(module, variables)
  rec = jax.tree_util.Partial(_recording, real.logits)
  w = jnp.asarray(np.random.default_rng(2).normal(size=(3, CLASSES)),
                  jnp.float32)
  return {"real": saliency.Model(logits=rec),
          "trivial": saliency.Model(logits=jax.tree_util.Partial(_trivial,
                                                                 w))}


def method_options(method: str, args) -> dict:
  """The sample counts of a method (small, so the bench runs in minutes)."""
  return {"occlusion": {"occlusion_window": 8, "occlusion_stride": 4},
          "rise": {"rise_masks": args.samples},
          "lime": {"lime_samples": args.samples},
          "kernel_shap": {"shap_samples": args.samples}}[method]


def method_tasks(name, module, variables, args) -> list[dict]:
  """One task per perturbation method: its calls, copies and batch."""
  mods = models_of(module, variables)
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(args.images, 32, 32, 3)), jnp.float32)
  # A 7 x 7 grid of 49 segments (SLIC's default asks for 50; on these
  # noise images it returns one segment, which makes KernelSHAP exact).
  cells = np.arange(32) * 7 // 32
  segs = cells[:, None] * 7 + cells[None, :]
  tasks = []
  for method in METHODS:
    opts = dict(method_options(method, args), baseline=0.0,
                key=jax.random.key(0))
    if method in ("lime", "kernel_shap"):
      opts["segments"] = segs
    passes = saliency.gradient_passes(mods["real"], method, (32, 32, 3),
                                      **{k: v for k, v in opts.items()
                                         if k != "key"})
    calls = {kind: (lambda m=m, method=method, opts=opts: saliency.explain(
        m, x, method=method, **opts)) for kind, m in mods.items()}
    del _BATCHES[:]
    jax.block_until_ready(calls["real"]())  # Compiles; records the batches.
    tasks.append({"model": name, "method": method, "calls": calls,
                  "copies": passes * args.images, "batch": max(_BATCHES),
                  "batches": sorted(set(_BATCHES))})
  return tasks


def curve_tasks(name, module, variables, args) -> list[dict]:
  """Deletion + insertion and ROAD, one jitted call's worth of images."""
  mods = models_of(module, variables)
  rng = np.random.default_rng(3)
  tasks = []
  for label, names in CURVES.items():
    opts = metric_options.Options(names=names, steps=args.steps)
    per_image = (2 * (opts.steps + 1) if "deletion" in names else
                 2 * (len(opts.road_thresholds) + 1))
    n = opts.batch_size // per_image
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    levels = rng.integers(0, 100, (n, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, CLASSES, n)
    calls = {kind: (lambda m=m, o=opts, i=images, lv=levels, lb=labels:
                    curves_lib.curves(m.logits, i, lb, lv, np.arange(len(i)),
                                      options=o, fill_value=[120, 121, 122]))
             for kind, m in mods.items()}
    del _BATCHES[:]
    calls["real"]()
    tasks.append({"model": name, "method": label, "calls": calls,
                  "copies": n * per_image, "batch": max(_BATCHES),
                  "batches": sorted(set(_BATCHES))})
  return tasks


def interleaved(fns: dict, rounds: int) -> dict:
  """{name: median seconds} of functions timed in interleaved rounds (each
  called once first, to compile)."""
  for fn in fns.values():
    jax.block_until_ready(fn())
  times = {k: [] for k in fns}
  for _ in range(rounds):
    for k, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[k].append(time.perf_counter() - start)
  return {k: statistics.median(t) for k, t in times.items()}


def measure(name: str, args) -> list[dict]:
  """Every task of one model, timed with the bare forwards at their batches."""
  module, variables = build(name)
  tasks = method_tasks(name, module, variables, args)
  if not args.no_curves:
    tasks += curve_tasks(name, module, variables, args)
  bare = jax.jit(lambda v, x: module.apply(v, x))
  batches = {t["batch"] for t in tasks} | {
      int(b) for b in args.sweep.split(",") if b}
  inputs = {b: jnp.asarray(np.random.default_rng(b).normal(
      size=(b, 32, 32, 3)), jnp.float32) for b in batches}
  fns = {f"bare {b}": (lambda b=b: bare(variables, inputs[b]))
         for b in sorted(inputs)}
  for t in tasks:
    for kind, fn in t["calls"].items():
      fns[f"{t['method']} {kind}"] = fn
  seconds = interleaved(fns, args.rounds)
  rows = [{"model": name, "method": "bare", "batch": b,
           "bare_images_per_s": b / seconds[f"bare {b}"]}
          for b in sorted(inputs)]
  for t in tasks:
    bare_rate = t["batch"] / seconds[f"bare {t['batch']}"]
    s, s0 = seconds[f"{t['method']} real"], seconds[f"{t['method']} trivial"]
    forwards = t["copies"] / bare_rate
    rows.append({"model": name, "method": t["method"], "batch": t["batch"],
                 "batches": t["batches"], "copies": t["copies"],
                 "bare_images_per_s": bare_rate, "seconds": s,
                 "copies_per_s": t["copies"] / s,
                 "ratio": t["copies"] / s / bare_rate,
                 "ratio_less_trivial": forwards / max(s - s0, 1e-9),
                 "forwards_s": forwards, "trivial_s": s0,
                 "rest_s": s - forwards - s0})
  return rows


def print_table(rows: list[dict]) -> None:
  print(f"\n| model | method | forward batch | copies/call | bare img/s | "
        f"method copies/s | ratio (>= {TARGET}) | ratio less trivial | "
        f"forwards ms | trivial ms | rest ms |\n" + "|---" * 11 + "|")
  for r in rows:
    if r["method"] == "bare":
      print(f"| {r['model']} | bare forward | {r['batch']} | | "
            f"{r['bare_images_per_s']:.0f} | | | | | | |")
      continue
    print(f"| {r['model']} | {r['method']} | {r['batch']} | {r['copies']} | "
          f"{r['bare_images_per_s']:.0f} | {r['copies_per_s']:.0f} | "
          f"{r['ratio']:.2f} | {r['ratio_less_trivial']:.2f} | "
          f"{1e3 * r['forwards_s']:.1f} | "
          f"{1e3 * r['trivial_s']:.1f} | {1e3 * r['rest_s']:.1f} |")


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--models", default="cnn,resnet18")
  p.add_argument("--images", default="16,4",
                 help="images per explain call, small CNN,ResNet-18 (16: "
                 "one chunk on a CPU; 4 gives the same forward batch)")
  p.add_argument("--samples", default="256,32",
                 help="RISE masks, LIME and KernelSHAP samples per image, "
                 "small CNN,ResNet-18")
  p.add_argument("--steps", type=int, default=20,
                 help="deletion/insertion steps (metrics' default 20)")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--sweep", default="16,32,64,128,256",
                 help="batches of the bare forward also timed (its best "
                 "batch; empty: none)")
  p.add_argument("--no-curves", action="store_true")
  p.add_argument("--quick", action="store_true",
                 help="small CNN only, 64 samples, 3 rounds (~1 min)")
  p.add_argument("--out", default=None, help="write the rows as JSON here")
  args = p.parse_args()
  if args.quick:
    args.models, args.samples, args.rounds = "cnn", "64,64", 3
  start = datetime.datetime.now(datetime.timezone.utc)
  print(f"{start:%Y-%m-%d %H:%M} UTC, {jax.devices()[0].device_kind}, "
        f"load {os.getloadavg()[0]:.2f}")
  rows = []
  for name in args.models.split(","):
    pick = lambda v: int(v.split(",")[name == "resnet18"])
    rows += measure(name, argparse.Namespace(
        **{**vars(args), "images": pick(args.images),
           "samples": pick(args.samples)}))
  print_table(rows)
  print(f"load average after: {os.getloadavg()[0]:.2f}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"started": start.isoformat(), "args": vars(args),
                 "device": jax.devices()[0].device_kind,
                 "load_after": os.getloadavg(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
