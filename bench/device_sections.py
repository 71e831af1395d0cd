"""The sections of bench/device.py: one function each, listed in `SECTIONS`.

A section takes the parsed command line (`args.tiny`: tiny models, batches
and steps for a CPU; `args.cifar_path`) and returns a dict of its figures,
JSON-serializable, with a "table" entry: rows [item, value, unit] that
bench/device.py prints. It raises when a check fails; the runner records the
error and goes on. To add a section, write its function and append it to
`SECTIONS`.
"""

import contextlib
import os
import tempfile
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

from bench import saliency as saliency_bench
from bench import single_pass
from bench import train as train_bench
from roar_jax import models
from roar_jax import saliency
from roar_jax.benchmark.roar import explain as explain_stage
from roar_jax.benchmark.roar import grid
from roar_jax.benchmark.roar import pipeline
from roar_jax.config import defaults as config_lib
from roar_jax.data import host_fill
from roar_jax.data import imputation

try:  # Written separately; its absence is a result, not a failure.
  from bench import batched_retrains
  BATCHED_IMPORT_ERROR = None
except ImportError as e:
  batched_retrains = None
  BATCHED_IMPORT_ERROR = f"{type(e).__name__}: {e}"

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_SAMPLES = 15  # The ensembles' noise samples (the paper's J).
# CG (float64, relative residual 1e-8) and the banded solve agree far below
# this before rounding (imputation.py documents 1e-5 against the reference);
# after rounding to uint8 a value on a rounding boundary may move one level.
FILL_TOLERANCE = 1e-5
UINT8_TOLERANCE = 1


def accelerated() -> bool:
  """Whether JAX runs on a GPU or TPU."""
  return jax.default_backend() != "cpu"


# ---------------------------------------------------------------------------
# a. Train step.


def _train_models(tiny: bool) -> dict:
  """name -> (model config, image size, batch, classes), bench_model's form."""
  r50 = {"name": "resnet50", "resnet50": {"stem": "imagenet"}}
  if tiny:
    return {"resnet50": (r50, 32, 2, 10),
            "fast_cnn": ({"name": "fast_cnn"}, 32, 8, 10)}
  # Batch 256 of fp32 ResNet-50 is expected to fit an 80 GB H100 (not yet
  # measured); `_fit` halves it where memory runs out.
  return {"resnet50": (r50, 224, 256, 1000),
          "fast_cnn": ({"name": "fast_cnn"}, 32, 1024, 10)}


def _out_of_memory(error: Exception) -> bool:
  """Whether `error` is XLA's out-of-memory error."""
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def _fit(name: str, spec: tuple, timing: tuple) -> dict:
  """bench_model on `spec`, halving the batch while the device runs out of
  memory. bench_model reads its models from train.MODELS: ours are put there
  for the call."""
  model_config, size, batch, classes = spec
  while True:
    try:
      with mock.patch.dict(train_bench.MODELS,
                           {name: (model_config, size, batch, classes)}):
        return train_bench.bench_model(name, *timing, num_devices=1)
    except Exception as e:  # pylint: disable=broad-except
      if not _out_of_memory(e) or batch <= 8:
        raise
      batch //= 2


def train_step(args) -> dict:
  """Project vs plain step: images/s and MFU over the measured matmul rate."""
  n = 1024 if args.tiny else (8192 if accelerated() else 2048)
  timing = (1, 1, 1) if args.tiny else (3, 5, 2)  # rounds, steps, warm-up
  rates = [train_bench.matmul_rate(n)]
  results = {name: _fit(name, spec, timing)
             for name, spec in _train_models(args.tiny).items()}
  rates.append(train_bench.matmul_rate(n))
  peak = max(rates) * 1e9
  out = {"peak_flops_per_s": peak, "matmul_gflops_start_end": rates,
         "peak_kind": f"measured fp32 {n}x{n} jnp.dot at default precision "
                      "(on GPUs XLA may run it, and the fp32 steps, as TF32)",
         "models": {}, "table": []}
  for name, r in results.items():
    for key, s in r["steps"].items():
      s["mfu"] = s["flops"] / s["median_s"] / peak
      out["table"].append(
          [f"{name} {r['image_size']}px b{r['batch']} {key}",
           s["images_per_s_per_device"], f"img/s (MFU {s['mfu']:.1%})"])
    # bench/train.py's target: at most 1.2.
    r["project_over_plain_time"] = (r["steps"]["project"]["median_s"] /
                                    r["steps"]["plain"]["median_s"])
    out["table"].append([f"{name} project / plain step time",
                         r["project_over_plain_time"], "x"])
    out["models"][name] = r
  return out


# ---------------------------------------------------------------------------
# b. Saliency throughput.


def _fast_cnn_model(batch: int):
  """The fast CNN (random weights) as a saliency.Model, images, targets."""
  module = models.get_model({"name": "fast_cnn"}, 10)
  variables = jax.jit(module.init)(jax.random.key(0),
                                   jnp.zeros((1, 32, 32, 3)))
  model = saliency.explainable(module, variables)
  x = np.random.default_rng(1).normal(size=(batch, 32, 32, 3))
  x = jnp.asarray(x.astype(np.float32))
  return model, x, jnp.argmax(jax.jit(model.logits)(x), -1).astype(jnp.int32)


def saliency_throughput(args) -> dict:
  """gradient and sg_sq.gradient (J = 15) images/s on the fast CNN."""
  batch = 4 if args.tiny else 512
  model, x, t = _fast_cnn_model(batch)
  key = jax.random.key(0)
  ours = np.asarray(saliency.explain(model, x, method="gradient", target=t))
  bare_fn = single_pass.bare_gradient()
  ref = np.asarray(bare_fn(model, x, t))
  sq = np.asarray(saliency.explain(model, x, method="sg_sq.gradient", key=key,
                                   target=t, num_samples=NUM_SAMPLES))
  tasks = {
      "bare jax.grad": (batch, lambda: jax.block_until_ready(
          bare_fn(model, x, t))),
      "gradient": (batch, lambda: jax.block_until_ready(saliency.explain(
          model, x, method="gradient", target=t))),
      f"sg_sq.gradient (J={NUM_SAMPLES})": (
          batch, lambda: jax.block_until_ready(saliency.explain(
              model, x, method="sg_sq.gradient", key=key, target=t,
              num_samples=NUM_SAMPLES))),
  }
  rate = saliency_bench.time_tasks(tasks, 1 if args.tiny else 5, "median")
  return {"batch": batch, "num_samples": NUM_SAMPLES, "images_per_s": rate,
          "gradient_vs_bare_max_abs": float(np.abs(ours - ref).max()),
          "bare_max_abs": float(np.abs(ref).max()),
          "sg_sq_min": float(sq.min()), "sg_sq_finite": bool(
              np.isfinite(sq).all()),
          "table": [[f"fast_cnn b{batch} {k}", v, "img/s"]
                    for k, v in rate.items()]}


# ---------------------------------------------------------------------------
# c. ROAD's noisy linear fill: CG on the device vs banded on the host.


def _fill_inputs(n: int, size: int, fraction: float = 0.5):
  """Smooth uint8 images, random pixel masks (none removed whole), noise."""
  rng = np.random.default_rng(0)
  coarse = rng.uniform(0, 255, (n, size // 8 + 1, size // 8 + 1, 3))
  images = np.repeat(np.repeat(coarse, 8, 1), 8, 2)[:, :size, :size]
  images = (images + rng.normal(0, 8, images.shape)).clip(0, 255)
  removed = rng.random((n, size, size, 1)) < fraction
  removed[:, 0, 0, 0] = False
  noise = imputation.noise(np.arange(n), (size, size, 3), seed=0)
  return images.astype(np.uint8), removed, noise


def _images_per_s(fn, n: int, repeats: int) -> float:
  """n / the median seconds of `fn()` over `repeats` calls after a first."""
  jax.block_until_ready(fn())  # Compiles (CG) and warms the caches.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return n / float(np.median(times))


def _fill_at(size: int, n_cg: int, n_banded: int, repeats: int) -> dict:
  """Both solvers at one image size: agreement on shared images, rates."""
  images, removed, noise = _fill_inputs(max(n_cg, n_banded), size)
  k = min(n_cg, n_banded)  # Both solve these.
  x = images[:k] / 255.0
  cg_fill = np.asarray(imputation.harmonic_fill(x, removed[:k]))
  banded_fill = host_fill.harmonic_fill_banded(x, removed[:k])
  cg_u8 = np.asarray(imputation.noisy_linear(
      images[:k], removed[:k], noise[:k], solver="cg"))
  banded_u8 = imputation.noisy_linear(images[:k], removed[:k], noise[:k],
                                      solver="banded")
  rate = {
      "cg": _images_per_s(lambda: imputation.noisy_linear(
          images[:n_cg], removed[:n_cg], noise[:n_cg], solver="cg"),
                          n_cg, repeats),
      "banded": _images_per_s(lambda: imputation.noisy_linear(
          images[:n_banded], removed[:n_banded], noise[:n_banded],
          solver="banded"), n_banded, repeats)}
  return {"size": size, "images": {"cg": n_cg, "banded": n_banded,
                                   "compared": k},
          "images_per_s": rate,
          "fill_max_abs_diff": float(np.abs(cg_fill - banded_fill).max()),
          "uint8_max_abs_diff": int(np.abs(cg_u8.astype(int) -
                                           banded_u8.astype(int)).max())}


def road_fill(args) -> dict:
  """Noisy linear fill at 50% removed: CG vs banded, images/s."""
  plan = ([(32, 8, 8)] if args.tiny else
          [(32, 4096, 512), (224, 256, 32)])  # (size, CG images, banded images)
  repeats = 1 if args.tiny else 3
  sizes = [_fill_at(size, n_cg, n_b, repeats) for size, n_cg, n_b in plan]
  agree = all(s["fill_max_abs_diff"] <= FILL_TOLERANCE and
              s["uint8_max_abs_diff"] <= UINT8_TOLERANCE for s in sizes)
  if not agree:
    raise AssertionError(f"CG and banded fills disagree: {sizes}")
  return {"fraction_removed": 0.5, "sizes": sizes,
          "fill_tolerance": FILL_TOLERANCE, "uint8_tolerance": UINT8_TOLERANCE,
          "table": [[f"{s['size']}px {solver}", v, "img/s"] for s in sizes
                    for solver, v in s["images_per_s"].items()]}


# ---------------------------------------------------------------------------
# d. One ROAR unit end to end.


def _unit_config(args):
  """The toy grid cut to one unit (--tiny), else CIFAR-10's fast config."""
  if args.tiny:
    config = config_lib.load("toy")
    with config.unlocked():
      config.data.toy.num_train, config.data.toy.num_test = 256, 64
      config.train.num_steps, config.train.batch_size = 8, 32
      config.train.eval_batch_size = config.explain.batch_size = 64
      config.train.checkpoint_every, config.train.log_every = 0, 4
      config.explain.shard_size = 128
  else:
    fast = os.path.join(REPO, "configs", "cifar10_fast.py")
    config = config_lib.load(fast if os.path.exists(fast) else "cifar10")
    with config.unlocked():
      config.model.name = "fast_cnn"
      if not os.path.exists(fast):
        config.train.num_steps = 500
      if args.cifar_path:
        config.data.path = args.cifar_path
  with config.unlocked():
    # One cheap estimator and its control: the explain stage ranks the whole
    # dataset for every configured estimator.
    config.explain.estimators = ("gradient", "random")
    config.explain.transforms = tuple(
        t for t in config.explain.get("transforms", ())
        if t[0] in config.explain.estimators)
    config.roar.thresholds, config.roar.modes = (0.5,), ("roar",)
    config.roar.num_seeds = 1
    config.roar.unit = "gradient/roar/0.5/0"
  return config


def roar_unit(args) -> dict:
  """pipeline.run of one unit into a temporary workdir, timed per stage."""
  config = _unit_config(args)
  seconds, unit_records = {}, []

  def timed(stage, fn):
    def wrapper(*a, **k):
      start = time.perf_counter()
      try:
        return fn(*a, **k)
      finally:
        seconds[stage] = (seconds.get(stage, 0.0) +
                          time.perf_counter() - start)
    return wrapper

  timed_unit = timed("retrain_unit", grid.run_unit)

  def run_unit(*a):
    unit_records.append(timed_unit(*a))
    return unit_records[-1]

  stages = [(pipeline, "train_base", "base_train"),
            (explain_stage, "run", "explain"),
            (grid, "channel_mean", "channel_mean"),
            (grid, "evaluate_no_retrain", "no_retrain_eval")]
  with tempfile.TemporaryDirectory() as workdir, contextlib.ExitStack() as st:
    for owner, attr, stage in stages:
      st.enter_context(mock.patch.object(owner, attr,
                                         timed(stage, getattr(owner, attr))))
    start = time.perf_counter()
    out = pipeline.run(config, workdir, run_unit=run_unit)
    seconds["total"] = time.perf_counter() - start
  (record,) = unit_records
  return {"config": "toy" if args.tiny else config.model.name,
          "unit": config.roar.unit, "units_run": out["units"],
          "train_steps": config.train.num_steps, "stage_seconds": seconds,
          "base_test_accuracy": out["base"]["test_accuracy"],
          "unit_test_accuracy": record["test_accuracy"],
          "table": [[f"{config.roar.unit} {k}", v, "s"]
                    for k, v in seconds.items()]}


# ---------------------------------------------------------------------------
# e. Batched vs sequential retrains.


def batched_vs_sequential(args) -> dict:
  """bench/batched_retrains.py's figures, or why there are none."""
  if batched_retrains is None:
    return {"status": "unavailable", "reason": BATCHED_IMPORT_ERROR,
            "table": [["bench/batched_retrains.py", "unavailable", ""]]}
  result = batched_retrains.measure(args.tiny)
  rows = [[k, v, ""] for k, v in result.items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)]
  return {"status": "ok", "result": result, "table": rows}


SECTIONS = [train_step, saliency_throughput, road_fill, roar_unit,
            batched_vs_sequential]
