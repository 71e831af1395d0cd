"""Retrain units per hour: K units trained together in one program vs one
after another.

A ROAR grid retrains one recipe many times (`roar.batch_units`). For each
model and K it times, in the same process and interleaved in rounds (so that
load on a shared machine affects both alike):

  sequential  K train states, each stepped by the trainer's jitted step
              (`trainer._compiled_steps`, as a unit trained alone runs);
  batched     the same K states stacked, stepped together by the vmapped
              step of `training/batched.py` (`batched.compiled_steps`).

Both start from the same initial states (each unit its own seed) and the same
device-resident batches (the input pipeline, which every unit runs once per
step either way, is left out), and one step of each must give the same losses
(to float rounding: vmap turns the convolutions into grouped ones) before
timing means anything. A unit is UNIT_EPOCHS epochs of CIFAR-10's 50,000
images at the model's batch; units/hour = 3600 / (its steps x the median
seconds per unit-step), training steps only (no compile, evaluation or
checkpoints).

  python bench/batched_retrains.py                 # small_cnn and fast_cnn
  python bench/batched_retrains.py --tiny          # a few steps, seconds
  python bench/batched_retrains.py --rounds 2 --steps 3 --json out.json

`measure(tiny)` returns the figures as a dict (bench/device.py calls it).
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from roar_jax.config import defaults as config_lib
from roar_jax.training import batched
from roar_jax.training import mesh as mesh_lib
from roar_jax.training import trainer
# pylint: enable=g-import-not-at-top,wrong-import-position

# name -> (model config, batch size): CIFAR-size, 32x32x3, 10 classes.
MODELS = {
    "small_cnn": ({"name": "small_cnn", "small_cnn": {"width": 32}}, 128),
    "fast_cnn": ({"name": "fast_cnn", "fast_cnn": {"widths": (16, 32, 64)}},
                 256),
}
IMAGE_SHAPE, NUM_CLASSES = (32, 32, 3), 10
UNIT_EPOCHS, NUM_TRAIN = 3, 50_000
KS = (2, 4)
# One step of each from the same states: losses agree to float32 rounding.
CHECK_RTOL = 1e-4


def make_config(model_config, batch_size: int, seed: int):
  """A unit's config: the model, SGD + momentum (the CIFAR recipes')."""
  c = config_lib.base_config()
  c.seed = seed
  c.model = model_config
  c.data.image_size = IMAGE_SHAPE[0]
  c.train.batch_size = batch_size
  c.train.optimizer = "sgd"
  c.train.momentum = 0.9
  c.train.learning_rate = 0.1
  c.train.schedule = "constant"
  return c


def _states_and_batches(name: str, k: int, batch: int, mesh):
  """K initial states (seeds 0..K-1), their step keys and batches."""
  model_config, _ = MODELS[name]
  configs = [make_config(model_config, batch, seed) for seed in range(k)]
  states = [trainer.create_state(c, NUM_CLASSES, IMAGE_SHAPE, mesh,
                                 jax.random.fold_in(jax.random.key(c.seed), 0))
            for c in configs]
  rng = np.random.default_rng(0)
  batches = [{"image": rng.normal(size=(batch, *IMAGE_SHAPE)).astype(
      np.float32), "label": rng.integers(0, NUM_CLASSES, batch).astype(
          np.int32)} for _ in range(k)]
  keys = [trainer.step_key(c) for c in configs]
  return states, keys, batches


def _seconds(run, steps: int) -> float:
  start = time.perf_counter()
  out = run(steps)
  jax.block_until_ready(out)
  return time.perf_counter() - start


def bench_pair(name: str, k: int, batch: int, rounds: int, steps: int,
               warmup: int, mesh) -> dict:
  """Seconds per unit-step of K units, sequential and batched."""
  states, keys, batches = _states_and_batches(name, k, batch, mesh)
  # pylint: disable-next=protected-access
  step_alone, _ = trainer._compiled_steps(mesh, 0.0)
  step_together, stack, _ = batched.compiled_steps(mesh, 0.0)
  stacked = stack(*states)
  alone_batches = [mesh_lib.to_global(b, mesh) for b in batches]
  together_batch = {key: jax.device_put(
      np.stack([b[key] for b in batches]), batched.batch_sharding(mesh))
                    for key in batches[0]}
  stacked_keys = jnp.stack(keys)

  stacked, metrics = step_together(stacked, together_batch, stacked_keys)
  together_loss = np.asarray(metrics["loss"])
  alone_loss = []
  for i in range(k):
    states[i], m = step_alone(states[i], alone_batches[i], keys[i])
    alone_loss.append(float(m["loss"]))
  loss_diff = float(np.max(np.abs(together_loss - alone_loss)
                           / np.abs(alone_loss)))
  if loss_diff > CHECK_RTOL:
    raise AssertionError(f"{name} K={k}: batched and sequential losses "
                         f"differ by {loss_diff:.2e} (relative) after a step")

  def sequential(n):
    for _ in range(n):
      for i in range(k):
        states[i], _ = step_alone(states[i], alone_batches[i], keys[i])
    return states

  def together(n):
    nonlocal stacked
    for _ in range(n):
      stacked, _ = step_together(stacked, together_batch, stacked_keys)
    return stacked

  for run in (sequential, together):
    _seconds(run, warmup)
  times = {"sequential": [], "batched": []}
  for _ in range(rounds):
    times["sequential"].append(_seconds(sequential, steps) / (steps * k))
    times["batched"].append(_seconds(together, steps) / (steps * k))
  return {kind: statistics.median(t) for kind, t in times.items()} | {
      "loss_rel_diff": loss_diff}


def measure(tiny: bool, rounds: int | None = None,
            steps: int | None = None) -> dict:
  """Units/hour batched (K=2, 4) and sequential, for each model.

  Args:
    tiny: a few small steps (seconds on a CPU): checks that it runs, the
      figures mean nothing.
    rounds: timed rounds; default 5 (2 tiny).
    steps: steps of each unit per round and kind; default 10 on a CPU, 50
      on an accelerator (2 tiny).

  Returns:
    Flat {'<model>_k<K>_<figure>': value}: `sequential_units_per_hour`,
    `batched_units_per_hour`, `ratio` (batched over sequential) and
    `loss_rel_diff` (the one-step check), with `device`, `unit_steps_<model>`.
  """
  # An accelerator's step takes milliseconds: more of them per timed round.
  accelerated = jax.default_backend() != "cpu"
  default_rounds, default_steps, warmup = (2, 2, 1) if tiny else (
      5, 50 if accelerated else 10, 3)
  rounds, steps = rounds or default_rounds, steps or default_steps
  mesh = mesh_lib.create_mesh()
  out = {"device": f"{jax.devices()[0].device_kind} x {jax.device_count()}",
         "tiny": tiny}
  for name, (_, batch) in MODELS.items():
    batch = 8 * mesh.size if tiny else batch
    unit_steps = round(UNIT_EPOCHS * NUM_TRAIN / batch)
    out[f"unit_steps_{name}"] = unit_steps
    for k in KS:
      figures = bench_pair(name, k, batch, rounds, steps, warmup, mesh)
      prefix = f"{name}_k{k}_"
      for kind in ("sequential", "batched"):
        out[prefix + f"{kind}_units_per_hour"] = 3600.0 / (
            unit_steps * figures[kind])
      out[prefix + "ratio"] = figures["sequential"] / figures["batched"]
      out[prefix + "loss_rel_diff"] = figures["loss_rel_diff"]
  return out


def _print(result: dict):
  print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}"
        f" UTC; {platform.node()}; jax {jax.__version__}; "
        f"{result['device']}; load {os.getloadavg()[0]:.2f}")
  print("| model | K | sequential units/h | batched units/h | ratio | "
        "one-step loss rel. diff |")
  print("|---|---|---|---|---|---|")
  for name in MODELS:
    for k in KS:
      p = f"{name}_k{k}_"
      print(f"| {name} | {k} | {result[p + 'sequential_units_per_hour']:.1f} "
            f"| {result[p + 'batched_units_per_hour']:.1f} | "
            f"{result[p + 'ratio']:.2f} | {result[p + 'loss_rel_diff']:.1e} |")
  print(f"a unit: {UNIT_EPOCHS} epochs of {NUM_TRAIN} images ("
        + ", ".join(f"{n}: {result['unit_steps_' + n]} steps" for n in MODELS)
        + "); ratio > 1: batched trains more units per hour")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tiny", action="store_true",
                      help="a few small steps: checks that it runs")
  parser.add_argument("--rounds", type=int, help="timed rounds (default 5)")
  parser.add_argument("--steps", type=int,
                      help="steps of each unit per round (default 10 on a "
                      "CPU, 50 on an accelerator)")
  parser.add_argument("--json", help="write the figures to this file")
  args = parser.parse_args()
  result = measure(args.tiny, args.rounds, args.steps)
  _print(result)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
