"""The explain stage's cost for the ROAR paper's 12 model-based estimators:
counted in gradient passes per image, and timed, shared vs one at a time.

The 12 are GRAD, IG (25 steps) and GB, each alone and in the SG, SG-SQ and
VAR noise ensembles (J = 15). `explain_all` draws the J noisy evaluations of a
base once for all three ensembles; computing each estimator on its own draws
them three times. The script prints

  - gradient passes per image, counted by tracing the computation
    (`saliency.gradient_passes`): all 12 in one call vs the sum of 12 calls
    (target: at most 432 against 1,242);
  - the measured time per image of the same two ways on the same images, and
    their ratio next to the counted one.

  python bench/explain_cost.py [--model cnn|resnet18] [--batch 8] [--repeats 3]
"""

import argparse
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
from roar_jax.config import defaults as config_lib
from roar_jax import models
from roar_jax import saliency
# pylint: enable=g-import-not-at-top,wrong-import-position

MODEL_BASED = tuple(m for m in config_lib.PAPER_ESTIMATORS
                    if m not in ("random", "sobel"))
# The models declare no normalization, so IG is given its baseline; the cost
# does not depend on it.
OPTIONS = {"num_samples": 15, "ig_steps": 25, "noise_scale": 0.15,
           "baseline": 0.0}


def _model(name: str):
  module = (models.SmallCNN(10) if name == "cnn" else
            models.ResNet18(10, stem="cifar"))
  variables = jax.jit(module.init)(jax.random.key(0),
                                   jnp.zeros((1, 32, 32, 3)))
  return saliency.explainable(module, variables)


def _run(model, images, groups):
  """Explains `images` once per group of methods; blocks until done."""
  key = jax.random.key(1)
  for methods in groups:
    maps = saliency.explain_all(model, images, methods=methods, key=key,
                                **OPTIONS)
    jax.block_until_ready(maps)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="cnn", choices=("cnn", "resnet18"))
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  model = _model(args.model)
  shape = (32, 32, 3)
  shared = saliency.gradient_passes(model, MODEL_BASED, shape, **OPTIONS)
  alone = sum(saliency.gradient_passes(model, (m,), shape, **OPTIONS)
              for m in MODEL_BASED)
  print(f"jax {jax.__version__} on {jax.default_backend()}; model {args.model}"
        f" at 32x32, batch {args.batch}, J={OPTIONS['num_samples']}, IG steps "
        f"{OPTIONS['ig_steps']}")
  print(f"{len(MODEL_BASED)} model-based estimators: {', '.join(MODEL_BASED)}")
  print(f"gradient passes per image, counted: {shared:,} in one call, "
        f"{alone:,} one estimator at a time ({alone / shared:.2f}x)")
  print(f"target: at most 432 against 1,242: "
        f"{'met' if shared <= 432 else 'NOT met'}")

  images = np.random.default_rng(0).normal(
      size=(args.batch, *shape)).astype(np.float32)
  ways = {"one call": [MODEL_BASED],
          "one estimator at a time": [(m,) for m in MODEL_BASED]}
  for groups in ways.values():  # Compile every program before timing.
    _run(model, images, groups)
  times = {name: [] for name in ways}
  for _ in range(args.repeats):  # Interleaved, so load hits both alike.
    for name, groups in ways.items():
      start = time.perf_counter()
      _run(model, images, groups)
      times[name].append(time.perf_counter() - start)
  per_image = {k: statistics.median(v) / args.batch * 1e3
               for k, v in times.items()}
  for name, ms in per_image.items():
    print(f"  {name:26s} {ms:9.1f} ms per image")
  measured = per_image["one estimator at a time"] / per_image["one call"]
  print(f"time ratio, one at a time / one call: {measured:.2f}x "
        f"(counted passes: {alone / shared:.2f}x)")


if __name__ == "__main__":
  main()
