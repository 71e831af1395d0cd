"""Test accuracy against training minutes: the fast recipe, the small CNN, ResNet-18.

Each point is one whole training run through the project's trainer
(`training.train_and_evaluate`, the path every ROAR retrain takes) on the full
CIFAR-10 (50,000 / 10,000 images), with the learning-rate schedule sized to
the point's budget: a short schedule that ends at 2 minutes is what a grid of
2-minute retrains gets, which a 10-minute schedule stopped at 2 minutes is
not. The number of steps for a budget comes from the recipe's measured step
rate (a short probe run); each point then reports its own measured wall and
process CPU minutes: the wall minutes are the trainer's `wall_time_s`
(initialization and training, not the final test pass), the CPU minutes
cover the whole run, test pass included.

Recipes (all on the same data; only model and optimizer differ):
  fast_cnn   configs/cifar10_fast.py (BatchNorm CNN, Nesterov SGD, label
             smoothing, 2-pixel translate), 3 epochs by default;
  small_cnn  the earlier study's recipe (configs/cifar10_small_study.py:
             width-16 small CNN, Adam 2e-3, batch 64) on the full data;
  resnet18   configs/cifar10.py (ResNet-18, CIFAR stem, SGD 0.1 cosine).

  python bench/train.py --curve                        # all three, 2/5/10 min
  python bench/accuracy_curve.py --models fast_cnn --budgets 2.5,5,10
  python bench/accuracy_curve.py --json curve.json

Needs ../shared/data/cifar10-jpeg.tar.gz (or TFDS cifar10 already prepared).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top
from roar_jax import training
from roar_jax.config import defaults
from roar_jax.data import sources
# pylint: enable=g-import-not-at-top

RECIPES = {
    "fast_cnn": ("cifar10_fast", None),
    "small_cnn": ("cifar10_small_study", {"num_train": None, "num_test": None}),
    "resnet18": ("cifar10", None),
}
PROBE_STEPS = 30


def recipe_config(name: str):
  """The config of a recipe, on the full CIFAR-10."""
  config_name, data_overrides = RECIPES[name]
  c = defaults.load(config_name)
  c.data.path = defaults.shared_path("cifar10-jpeg.tar.gz")
  for key, value in (data_overrides or {}).items():
    c.data[key] = value
  c.train.checkpoint_every = 0
  c.train.log_every = 50
  return c


def with_steps(config, num_steps: int):
  """The recipe with its schedule rescaled to `num_steps` (warm-up kept at
  the recipe's fraction of the run)."""
  c = config.copy_and_resolve_references()
  fraction = config.train.warmup_steps / max(config.train.num_steps, 1)
  c.train.num_steps = int(num_steps)
  c.train.warmup_steps = int(round(fraction * num_steps))
  return c


def _timed_run(config, source, workdir: str) -> dict:
  start_cpu = time.process_time()
  result = training.train_and_evaluate(config, workdir, source=source)
  return {"test_accuracy": result["test_accuracy"],
          "steps": result["steps"],
          "images": result["steps"] * int(config.train.batch_size),
          # The trainer's wall time ends where the test pass begins.
          "train_wall_min": result["wall_time_s"] / 60,
          "cpu_min_with_eval": (time.process_time() - start_cpu) / 60}


def step_rate(config, source, scratch: str) -> float:
  """Training steps per second of a recipe, from a short run after compiling
  (a first run of a few steps pays the compile)."""
  for steps in (3, PROBE_STEPS):
    folder = os.path.join(scratch, f"probe{steps}")
    start = time.time()
    training.train_and_evaluate(with_steps(config, steps), folder,
                                source=source)
    elapsed = time.time() - start
    shutil.rmtree(folder, ignore_errors=True)
  # The probe's time includes one evaluation; the slope between the two runs
  # would be cleaner but doubles the probe: the rate is only a planning
  # figure, each point reports its measured minutes.
  return PROBE_STEPS / elapsed


def curve(names, budgets_min, scratch: str) -> list[dict]:
  """One training run per (recipe, budget); returns their points."""
  points = []
  for name in names:
    config = recipe_config(name)
    source = sources.get_source(config.data)
    rate = step_rate(config, source, scratch)
    for budget in budgets_min:
      steps = max(int(rate * budget * 60), 10)
      folder = os.path.join(scratch, f"{name}_{budget}")
      point = _timed_run(with_steps(config, steps), source, folder)
      shutil.rmtree(folder, ignore_errors=True)
      point.update(model=name, budget_min=budget,
                   epochs=point["images"] / source.info.num_train)
      print(f"  {name} budget {budget} min: {point['test_accuracy']:.2%} "
            f"after {point['epochs']:.2f} epochs, "
            f"{point['train_wall_min']:.2f} wall min, "
            f"{point['cpu_min_with_eval']:.2f} CPU min", flush=True)
      points.append(point)
  return points


def print_table(points: list[dict]):
  print("| model | budget (min) | epochs | train wall (min) | process CPU "
        "(min, with test pass) | test accuracy |")
  print("|---|---|---|---|---|---|")
  for p in points:
    print(f"| {p['model']} | {p['budget_min']:g} | {p['epochs']:.2f} | "
          f"{p['train_wall_min']:.2f} | {p['cpu_min_with_eval']:.2f} | "
          f"{p['test_accuracy']:.2%} |")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default=",".join(RECIPES),
                      help="comma-separated, of: " + ", ".join(RECIPES))
  parser.add_argument("--budgets", default="2,5,10",
                      help="training minutes per point, comma-separated")
  parser.add_argument("--json", help="also write the points here")
  args = parser.parse_args(argv)
  names = [m for m in args.models.split(",") if m]
  unknown = [m for m in names if m not in RECIPES]
  if unknown:
    parser.error(f"--models: unknown {unknown}; known: {', '.join(RECIPES)}")
  budgets = [float(b) for b in args.budgets.split(",") if b]
  print(f"jax {jax.__version__}, {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s), {os.cpu_count()} cores; "
        f"load {os.getloadavg()[0]:.2f}", flush=True)
  scratch = tempfile.mkdtemp(prefix="accuracy_curve_")
  try:
    points = curve(names, budgets, scratch)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  print_table(points)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"points": points, "load_end": os.getloadavg()[0]}, f,
                indent=2)


if __name__ == "__main__":
  main()
