"""Training speed: the project's train step against a plain Flax step.

For each model it times, in the same process and interleaved in rounds (so that
load on a shared machine affects both alike):

  project  `roar_jax.training.steps.train_step` on the project's TrainState,
           jitted over a device mesh with explicit shardings (batch split
           over 'data', state replicated, state donated), as
           `training/trainer.py` runs it; the mesh has --devices devices
           (default 1, to compare like with like);
  plain    a one-device Flax step written here: `jax.value_and_grad` of the
           cross-entropy, an optax update, plain `jax.jit`, no mesh.

Both start from the same initial variables with the same optimizer (SGD,
momentum 0.9, constant learning rate), and the script checks that one step of
each gives the same loss and parameters before timing. It prints the median
step time, training images/s per device, XLA's FLOP count of the compiled step
(`compile().cost_analysis()['flops']`) and the model FLOPs utilization: those
FLOPs per second over the fp32 matmul rate of this machine (a 2048x2048
`jnp.dot`, measured at the start and the end of the run; the better median is
used). Target: the project's step takes at most 1.2x the plain step's time
(per device).

  python bench/train.py                       # fast_cnn, small_cnn, resnet18
  python bench/train.py --curve               # test accuracy vs minutes
  python bench/train.py --models resnet50     # ResNet-50 at 224, batch 8
  python bench/train.py --rounds 5 --json out.json
"""

import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top
from bench import accuracy_curve
from roar_jax.config import defaults as config_lib
from roar_jax import models
from roar_jax.training import mesh as mesh_lib
from roar_jax.training import steps
from roar_jax.training import trainer
# pylint: enable=g-import-not-at-top

# name -> (model config, image size, batch size, number of classes).
MODELS = {
    "fast_cnn": ({"name": "fast_cnn"}, 32, 256, 10),
    "small_cnn": ({"name": "small_cnn"}, 32, 128, 10),
    "resnet18": ({"name": "resnet18", "resnet18": {"stem": "cifar"}}, 32, 64,
                 10),
    "resnet50": ({"name": "resnet50", "resnet50": {"stem": "imagenet"}}, 224,
                 8, 1000),
}
LEARNING_RATE = 0.1
MOMENTUM = 0.9
TARGET_RATIO = 1.2


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def matmul_rate(n: int = 2048, repeats: int = 10, warmup: int = 2) -> float:
  """Median fp32 GFLOP/s of an n x n `jnp.dot` on the default device."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  for _ in range(warmup):
    dot(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    dot(a, b).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * n**3 / statistics.median(times) / 1e9


def xla_flops(jitted, *args) -> float:
  """FLOPs of one call, from XLA's cost analysis of the compiled program
  (per device for a sharded program)."""
  cost = jitted.lower(*args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older JAX: one dict per program.
    cost = cost[0]
  return float(cost["flops"])


def make_config(model_config, image_size: int, batch_size: int):
  """A project config of the model, trained with SGD + momentum, no decay."""
  c = config_lib.base_config()
  c.model = model_config
  c.data.image_size = image_size
  c.train.batch_size = batch_size
  c.train.optimizer = "sgd"
  c.train.learning_rate = LEARNING_RATE
  c.train.momentum = MOMENTUM
  c.train.schedule = "constant"
  c.train.weight_decay = 0.0
  c.train.label_smoothing = 0.0
  return c


def plain_train_step(module, tx, has_batch_stats: bool):
  """A one-device Flax training step, written the usual way."""

  def step(params, batch_stats, opt_state, images, labels):
    def loss_fn(params):
      if has_batch_stats:
        logits, updates = module.apply(
            {"params": params, "batch_stats": batch_stats}, images, train=True,
            mutable=["batch_stats"])
        new_stats = updates["batch_stats"]
      else:
        logits = module.apply({"params": params}, images, train=True)
        new_stats = batch_stats
      loss = optax.softmax_cross_entropy_with_integer_labels(
          logits, labels).mean()
      return loss, new_stats

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1, 2))


def _max_abs(tree) -> float:
  return max(float(np.max(np.abs(x))) for x in jax.tree.leaves(tree))


def _diff_over_update(a, b, start) -> float:
  """max |a - b| over the largest parameter change of the step (b - start)."""
  diff = _max_abs(jax.tree.map(lambda x, y: np.asarray(x) - np.asarray(y),
                               a, b))
  update = _max_abs(jax.tree.map(lambda y, s: np.asarray(y) - np.asarray(s),
                                 b, start))
  return diff / max(update, 1e-30)


def time_interleaved(runners: dict, rounds: int, steps_per_round: int,
                     warmup: int) -> dict[str, list[float]]:
  """Seconds of each call of each runner, in interleaved rounds.

  Args:
    runners: name -> a function that runs one step to completion.
    rounds: rounds; each runs every runner `steps_per_round` times, the
      order alternating so that neither always follows the other.
    steps_per_round: timed calls per runner per round.
    warmup: untimed calls of each runner first.

  Returns:
    name -> the seconds of each timed call.
  """
  for run in runners.values():
    for _ in range(warmup):
      run()
  times = {k: [] for k in runners}
  for r in range(rounds):
    order = list(runners) if r % 2 == 0 else list(runners)[::-1]
    for key in order:
      for _ in range(steps_per_round):
        start = time.perf_counter()
        runners[key]()
        times[key].append(time.perf_counter() - start)
  return times


def project_train_step(config, num_classes: int, image_shape, mesh):
  """(initial state, jitted step): the project's step, as trainer.py builds
  and runs it (batch split over 'data', state replicated and donated)."""
  state = trainer.create_state(config, num_classes, image_shape, mesh,
                               jax.random.key(0))
  repl, data = mesh_lib.replicated(mesh), mesh_lib.data_sharding(mesh)
  project = jax.jit(
      functools.partial(steps.train_step, label_smoothing=0.0),
      in_shardings=(repl, data, repl), out_shardings=(repl, repl),
      donate_argnums=0)
  return state, project


def plain_start(state, tx, device):
  """(params, batch stats or None, optimizer state): the project state's
  initial variables on one device, for the plain step."""
  params = jax.device_put(jax.device_get(state.params), device)
  stats = (None if state.batch_stats is None else
           jax.device_put(jax.device_get(state.batch_stats), device))
  return params, stats, tx.init(params)


def bench_model(name: str, rounds: int, steps_per_round: int, warmup: int,
                num_devices: int) -> dict:
  """Times both steps of one model; returns their figures."""
  model_config, size, batch, num_classes = MODELS[name]
  config = make_config(model_config, size, batch)
  mesh = Mesh(np.array(jax.devices()[:num_devices]), ("data",))
  mesh_lib.local_batch_size(batch, mesh)
  image_shape = (size, size, 3)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(batch, *image_shape)).astype(np.float32)
  labels = rng.integers(0, num_classes, size=(batch,)).astype(np.int32)

  state, project = project_train_step(config, num_classes, image_shape, mesh)
  gbatch = mesh_lib.to_global({"image": images, "label": labels}, mesh)
  step_rng = jax.random.key(1)

  # The plain step, from the same initial variables, on one device.
  device = jax.devices()[0]
  module = models.get_model(config.model, num_classes)
  tx = optax.sgd(LEARNING_RATE, momentum=MOMENTUM)
  params, stats, opt_state = plain_start(state, tx, device)
  plain = plain_train_step(module, tx, stats is not None)
  x, y = jax.device_put(images, device), jax.device_put(labels, device)

  flops = {"project": xla_flops(project, state, gbatch, step_rng),
           "plain": xla_flops(plain, params, stats, opt_state, x, y)}

  # One step of each from the same start must agree before timing means
  # anything.
  start_params = jax.device_get(state.params)
  state, metrics = project(state, gbatch, step_rng)
  params, stats, opt_state, loss = plain(params, stats, opt_state, x, y)
  check = {"loss_diff": abs(float(metrics["loss"]) - float(loss)),
           "params_diff_over_update": _diff_over_update(
               jax.device_get(state.params), jax.device_get(params),
               start_params)}
  if check["loss_diff"] > 1e-4 or check["params_diff_over_update"] > 1e-2:
    raise AssertionError(f"{name}: the two steps disagree: {check}")

  def run_project():
    nonlocal state
    state, m = project(state, gbatch, step_rng)
    jax.block_until_ready((state, m))

  def run_plain():
    nonlocal params, stats, opt_state
    params, stats, opt_state, l = plain(params, stats, opt_state, x, y)
    jax.block_until_ready((params, stats, opt_state, l))

  runners = {"project": run_project, "plain": run_plain}
  times = time_interleaved(runners, rounds, steps_per_round, warmup)

  devices = {"project": mesh.size, "plain": 1}
  return {"model": name, "image_size": size, "batch": batch,
          "devices": devices, "check": check,
          "steps": {key: {"median_s": statistics.median(times[key]),
                          "times_s": times[key], "flops": flops[key],
                          "images_per_s_per_device": batch / statistics.median(
                              times[key]) / devices[key]}
                    for key in runners}}


def print_report(results: list[dict], rates: list[float], args):
  rate = max(rates)
  now = datetime.datetime.now(datetime.timezone.utc)
  print(f"date: {now:%Y-%m-%d %H:%M} UTC; machine: {cpu_name()}, "
        f"{os.cpu_count()} cores; jax {jax.__version__}, "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s)")
  print(f"fp32 matmul 2048x2048 jnp.dot: "
        f"{' / '.join(f'{r:.0f}' for r in rates)} GFLOP/s (start / end); "
        f"MFU below is over {rate:.0f} GFLOP/s")
  print(f"timing: median of {args.rounds} x {args.steps} steps per step kind "
        f"after {args.warmup} warm-up steps, interleaved rounds")
  print()
  print("| model | input | batch | step | devices | ms/step | images/s/device "
        "| XLA GFLOP/step/device | MFU |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in results:
    for key in ("project", "plain"):
      s = r["steps"][key]
      mfu = s["flops"] / s["median_s"] / (rate * 1e9)
      print(f"| {r['model']} | {r['image_size']}x{r['image_size']} | "
            f"{r['batch']} | {key} | {r['devices'][key]} | "
            f"{s['median_s'] * 1e3:.1f} | {s['images_per_s_per_device']:.1f} | "
            f"{s['flops'] / 1e9:.2f} | {mfu:.1%} |")
  print()
  print("ratio plain / project images/s per device (with one device: the "
        f"project's step time over the plain one's; target <= {TARGET_RATIO}):")
  for r in results:
    p, q = r["steps"]["project"], r["steps"]["plain"]
    ratio = q["images_per_s_per_device"] / p["images_per_s_per_device"]
    verdict = "ok" if ratio <= TARGET_RATIO else "ABOVE TARGET"
    print(f"  {r['model']}: {ratio:.2f} ({verdict}); one-step check: loss "
          f"|diff| {r['check']['loss_diff']:.1e}, parameters max |diff| / max "
          f"|update| {r['check']['params_diff_over_update']:.1e}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="fast_cnn,small_cnn,resnet18",
                      help="comma-separated, of: " + ", ".join(MODELS))
  parser.add_argument("--resnet50", action="store_true",
                      help="also ResNet-50 at 224x224, batch 8 (slow on CPU)")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=3,
                      help="timed steps per step kind per round")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--devices", type=int, default=1,
                      help="devices of the project step's mesh (the plain "
                      "step always runs on one)")
  parser.add_argument("--json", help="also write the figures here")
  parser.add_argument("--curve", action="store_true",
                      help="instead: test accuracy against training minutes "
                      "on CIFAR-10 (bench/accuracy_curve.py; pass its "
                      "--budgets/--models after --)")
  args, rest = parser.parse_known_args()
  if args.curve:
    accuracy_curve.main(rest + (["--json", args.json] if args.json else []))
    return
  if rest:
    parser.error(f"unrecognized arguments: {' '.join(rest)}")
  names = [m for m in args.models.split(",") if m]
  if args.resnet50 and "resnet50" not in names:
    names.append("resnet50")
  if not 1 <= args.devices <= jax.device_count():
    parser.error(f"--devices={args.devices}: this machine has "
                 f"{jax.device_count()} device(s)")
  for name in names:
    if name not in MODELS:
      parser.error(f"--models: unknown model {name!r}; known: "
                   f"{', '.join(MODELS)}")
  rates = [matmul_rate()]
  results = [bench_model(n, args.rounds, args.steps, args.warmup,
                         args.devices) for n in names]
  rates.append(matmul_rate())
  print_report(results, rates, args)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"matmul_gflops": rates, "results": results}, f, indent=2)


if __name__ == "__main__":
  main()
