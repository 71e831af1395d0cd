"""Writes tests/references/expected_gradients.npz: Captum's GradientShap maps.

    python tests/references/make_expected_gradients.py

needs torch and captum (not the test's dependencies: the test reads the
.npz). The problem: `roar_jax.models.SmallCNN(5, width=4)` with its
initializer's weights and small random biases, 3 images 16x16x3, 6
references, 8 samples per image, fixed target classes; the torch twin
(bench/torch_twins.py) holds the same weights. The .npz carries the weights,
images, references, targets, the draws and Captum's maps.

The draws: Captum draws inside GradientShap. Its NoiseTunnel draws the
reference of every sample with np.random.choice(R, N * S), then
InputBaselineXGradient the alphas with np.random.uniform(0, 1, N * S); row
i * S + s of both is sample s of image i, whose point is alpha x + (1 - alpha)
x0. This script seeds numpy's global generator, runs
GradientShap.attribute(stdevs=0.0) (Captum's default: no noise), then replays
the same two calls from the same seed to record the draws, and checks the
record: the maps recomputed from it with torch autograd equal Captum's. The
test feeds the recorded draws to `expected_gradients.from_draws`.
"""

import os
import sys

import jax
import numpy as np
import captum
import torch
from captum import attr
from flax import traverse_util

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, REPO)
# pylint: disable=g-import-not-at-top,wrong-import-position
from bench import torch_twins
from roar_jax import models
# pylint: enable=g-import-not-at-top,wrong-import-position

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                   "expected_gradients.npz")
NUM_IMAGES, NUM_REFS, SAMPLES, SIZE, CLASSES = 3, 6, 8, 16, 5
SEED = 2021


def problem():
  """(Flax params, images, references, targets), numpy float32 NHWC."""
  rng = np.random.default_rng(SEED)
  module = models.SmallCNN(CLASSES, width=4)
  images = rng.normal(size=(NUM_IMAGES, SIZE, SIZE, 3)).astype(np.float32)
  refs = rng.normal(size=(NUM_REFS, SIZE, SIZE, 3)).astype(np.float32) * 0.5
  params = module.init(jax.random.key(SEED), images)["params"]
  params = jax.tree.map(np.asarray, params)
  for leaf in params.values():  # Biases at 0 leave the ReLUs too tame.
    leaf["bias"] = (rng.normal(size=leaf["bias"].shape) * 0.1).astype(
        np.float32)
  targets = np.array([0, 3, 1], np.int64)
  return params, images, refs, targets


def recorded_draws():
  """The draws of GradientShap.attribute right after np.random.seed(SEED)."""
  np.random.seed(SEED)
  ids = np.random.choice(NUM_REFS, NUM_IMAGES * SAMPLES)
  alphas = np.random.uniform(0.0, 1.0, NUM_IMAGES * SAMPLES)
  return (ids.reshape(NUM_IMAGES, SAMPLES).astype(np.int32),
          alphas.reshape(NUM_IMAGES, SAMPLES).astype(np.float32))


def by_hand(net, x, refs, targets, ids, alphas):
  """mean_s (x - x0_s) * grad f(alpha_s x + (1 - alpha_s) x0_s), in torch."""
  x0 = refs[torch.as_tensor(ids.reshape(-1), dtype=torch.long)]
  xs = x.repeat_interleave(SAMPLES, dim=0)
  a = torch.as_tensor(alphas.reshape(-1, 1, 1, 1))
  points = (a * xs + (1 - a) * x0).requires_grad_()
  out = net(points).gather(1, targets.repeat_interleave(SAMPLES)[:, None])
  (grads,) = torch.autograd.grad(out.sum(), points)
  maps = ((xs - x0) * grads).reshape((NUM_IMAGES, SAMPLES) + x.shape[1:])
  return maps.mean(dim=1)


def main():
  params, images, refs, targets = problem()
  net = torch_twins.small_cnn(params).eval()
  nchw = lambda a: torch.as_tensor(np.transpose(a, (0, 3, 1, 2)).copy())
  x, x0, t = nchw(images), nchw(refs), torch.as_tensor(targets)
  np.random.seed(SEED)
  torch.manual_seed(SEED)  # The zero noise is drawn from torch's generator.
  maps = attr.GradientShap(net).attribute(x, baselines=x0, target=t,
                                          n_samples=SAMPLES, stdevs=0.0)
  ids, alphas = recorded_draws()
  hand = by_hand(net, x, x0, t, ids, alphas)
  err = float((hand - maps).abs().max() / maps.abs().max())
  assert err < 1e-6, f"the recorded draws are not Captum's: {err}"
  flat = traverse_util.flatten_dict(params, sep="/")
  np.savez_compressed(
      OUT, images=images, references=refs, targets=targets.astype(np.int32),
      ref_ids=ids, alphas=alphas,
      maps=np.transpose(maps.detach().numpy(), (0, 2, 3, 1)),
      **{f"params/{k}": v for k, v in flat.items()})
  print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes); replay error {err:.1e}"
        f"; captum {captum.__version__}, torch {torch.__version__}")


if __name__ == "__main__":
  main()
