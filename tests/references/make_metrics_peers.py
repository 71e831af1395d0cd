"""Writes tests/references/metrics_peers.npz: Captum's infidelity and
sensitivity_max and Quantus's FaithfulnessCorrelation on roar_jax's draws.

    python tests/references/make_metrics_peers.py

Needs torch, captum and quantus (not the test's dependencies: the test reads
the .npz). The problem: `roar_jax.models.SmallCNN(10, width=4)` with its
initializer's weights and small random biases, 4 images 16x16x3, explained
for the class the model predicts; the maps are the gradient of that class's
logit (roar_jax's, in JAX); the torch twin (bench/torch_twins.py) holds the
same weights, and its autograd gradient is the explanation function Captum's
sensitivity calls on the perturbed images.

The peers are fed roar_jax's perturbations, drawn in JAX from the images'
keys (`metric_draws`, the run seed SEED and the images' INDICES):
- infidelity: a perturb_func returning (I, x - I) with our I
  (`infidelity.perturbations`), checked to be called once on the inputs
  repeated SAMPLES times per image;
- sensitivity_max: a perturb_func returning our x + d
  (`sensitivity.perturbed_inputs`); the per-draw ratios come from one Captum
  call per draw (n_perturb_samples=1 replaying draw j), whose max is checked
  against Captum's own max and whose mean is the -avg reference;
- FaithfulnessCorrelation: np.random.choice, which Quantus draws each
  subset with, replays our subsets (`faithfulness.subsets`, converted from
  NHWC to NCHW positions), checked call by call.
"""

import os
import sys

import numpy as np

sys.modules["tensorflow"] = None  # Quantus then takes the torch path alone.

# pylint: disable=g-import-not-at-top,wrong-import-position
import torch
import jax
import jax.numpy as jnp
import captum
import captum.metrics
import quantus
from flax import traverse_util

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, REPO)
from bench import torch_twins
from roar_jax import models
from roar_jax.benchmark.roar import faithfulness
from roar_jax.benchmark.roar import infidelity
from roar_jax.benchmark.roar import metric_draws
from roar_jax.benchmark.roar import sensitivity
# pylint: enable=g-import-not-at-top,wrong-import-position

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                   "metrics_peers.npz")
N, SIZE, CLASSES, WIDTH = 4, 16, 10, 4
SEED = 2019
INDICES = np.array([3, 17, 40, 41])
SAMPLES = 8  # Infidelity and sensitivity draws per image.
STD, RADIUS = 0.2, 0.02
RUNS, SUBSET = 100, 16  # Faithfulness: nr_runs; subset_size = the side.


def problem():
  """(Flax params, images NHWC, targets, gradient maps NHWC)."""
  rng = np.random.default_rng(SEED)
  module = models.SmallCNN(CLASSES, width=WIDTH)
  images = rng.normal(size=(N, SIZE, SIZE, 3)).astype(np.float32)
  params = jax.tree.map(np.asarray, module.init(
      jax.random.key(SEED), images)["params"])
  for leaf in params.values():  # Biases at 0 leave the ReLUs too tame.
    leaf["bias"] = (rng.normal(size=leaf["bias"].shape) * 0.1).astype(
        np.float32)
  logits = lambda x: module.apply({"params": params}, x)
  targets = np.asarray(jnp.argmax(logits(images), -1), np.int32)
  maps = gradient(logits, images, targets)
  return params, images, targets, maps


def gradient(logits, images, targets):
  """d logit_target / d x, NHWC (float32)."""
  def one(x, t):
    return jax.grad(lambda v: logits(v[None])[0, t])(x)
  return np.asarray(jax.vmap(one)(jnp.asarray(images), jnp.asarray(targets)))


def nchw(a):
  return torch.as_tensor(np.ascontiguousarray(np.moveaxis(a, -1, -3)))


def nhwc(t):
  return np.moveaxis(t.detach().numpy(), -3, -1)


def torch_gradient(net):
  """Captum's explanation_func: the twin's gradient of the target logit."""
  def explain(inputs, target):
    x = (inputs[0] if isinstance(inputs, tuple) else inputs).clone()
    t = torch.as_tensor(np.array(target)).reshape(-1, 1)
    with torch.enable_grad():  # Captum calls it under torch.no_grad.
      x.requires_grad_()
      (g,) = torch.autograd.grad(net(x).gather(1, t).sum(), x)
    # Captum iterates over the clean explanation as it would a tuple.
    return (g,) if isinstance(inputs, tuple) else g
  return explain


def captum_infidelity(net, x, maps, targets, noise):
  """Captum's infidelity with normalize off and on, fed our I [N, S, ...]."""
  calls = []

  def perturb(inputs):
    calls.append(inputs.clone())
    i = nchw(noise.reshape((-1,) + noise.shape[2:]))
    return i, inputs - i

  out = {}
  for normalize in (False, True):
    v = captum.metrics.infidelity(
        net, perturb, x, maps, target=torch.as_tensor(targets),
        n_perturb_samples=SAMPLES, normalize=normalize)
    out[normalize] = v.detach().numpy().astype(np.float64)
  expected = x.repeat_interleave(SAMPLES, dim=0)
  assert len(calls) == 2 and all(torch.equal(c, expected) for c in calls)
  return out[False], out[True]


def captum_sensitivity(net, x, targets, perturbed):
  """Captum's sensitivity_max fed our x + d [N, S, ...]: its max over all
  draws, and each draw's ratio (one call per draw)."""
  explain = torch_gradient(net)
  t = torch.as_tensor(targets)

  def replay(rows):
    def perturb(inputs, radius):
      del radius
      assert inputs.shape[0] == rows.shape[0]
      return nchw(rows)
    return perturb

  flat = perturbed.reshape((-1,) + perturbed.shape[2:])
  smax = captum.metrics.sensitivity_max(
      explain, x, perturb_func=replay(flat), n_perturb_samples=SAMPLES,
      perturb_radius=RADIUS, target=t).detach().numpy()
  per_draw = np.stack([captum.metrics.sensitivity_max(
      explain, x, perturb_func=replay(perturbed[:, j]), n_perturb_samples=1,
      perturb_radius=RADIUS, target=t).detach().numpy()
                       for j in range(SAMPLES)], axis=1)
  return smax.astype(np.float64), per_draw.astype(np.float64)


def quantus_faithfulness(net, images, maps, targets, subsets_nhwc):
  """Quantus's FaithfulnessCorrelation with np.random.choice replaying our
  subsets (run-major, image-minor, as Quantus draws them)."""
  h, w, c = images.shape[1:]
  hh, ww, cc = np.unravel_index(subsets_nhwc, (h, w, c))
  subsets = cc * h * w + hh * w + ww  # NCHW positions.
  order = [(r, i) for r in range(RUNS) for i in range(N)]
  calls = iter(order)
  choice = np.random.choice

  def replay(n, size, replace=True, p=None):
    assert (n, size, replace, p) == (h * w * c, SUBSET, False, None)
    r, i = next(calls)
    return subsets[i, r]

  metric = quantus.FaithfulnessCorrelation(
      nr_runs=RUNS, subset_size=SUBSET, perturb_baseline="black",
      return_aggregate=False, disable_warnings=True)
  np.random.choice = replay
  try:
    scores = metric(model=net, x_batch=nchw(images).numpy(),
                    y_batch=targets.astype(np.int64),
                    a_batch=nchw(maps).numpy(), channel_first=True,
                    device="cpu")
  finally:
    np.random.choice = choice
  assert next(calls, None) is None, "Quantus drew fewer subsets"
  return np.asarray(scores, np.float64)


def main():
  params, images, targets, maps = problem()
  net = torch_twins.small_cnn(params).eval()
  x = nchw(images)
  logits_t = net(x).detach().numpy()
  module = models.SmallCNN(CLASSES, width=WIDTH)
  logits_j = np.asarray(module.apply({"params": params}, images))
  assert np.abs(logits_t - logits_j).max() < 1e-4, "the twin differs"
  g_t = nhwc(torch_gradient(net)(x, targets))
  assert np.abs(g_t - maps).max() <= 1e-5 * np.abs(maps).max() + 1e-7

  draws = jnp.arange(SAMPLES, dtype=jnp.uint32)
  noise = np.asarray(infidelity.perturbations(
      metric_draws.image_keys(SEED, metric_draws.INFIDELITY_STREAM, INDICES),
      draws, images.shape[1:], STD))
  perturbed = np.asarray(sensitivity.perturbed_inputs(
      jnp.asarray(images), jnp.float32(RADIUS),
      metric_draws.image_keys(SEED, metric_draws.SENSITIVITY_STREAM, INDICES),
      draws)).reshape((N, SAMPLES) + images.shape[1:])
  subsets = np.asarray(faithfulness.subsets(
      metric_draws.image_keys(SEED, metric_draws.FAITHFULNESS_STREAM,
                              INDICES),
      jnp.arange(RUNS, dtype=jnp.uint32), images[0].size, SUBSET))

  infid, infid_norm = captum_infidelity(net, x, nchw(maps), targets, noise)
  smax, per_draw = captum_sensitivity(net, x, targets, perturbed)
  assert np.allclose(per_draw.max(1), smax, rtol=1e-6), (per_draw, smax)
  faith = quantus_faithfulness(net, images, maps, targets, subsets)

  flat = traverse_util.flatten_dict(params, sep="/")
  np.savez_compressed(
      OUT, images=images, targets=targets, indices=INDICES,
      seed=np.int64(SEED), maps=maps, samples=np.int64(SAMPLES),
      std=np.float32(STD), radius=np.float32(RADIUS), runs=np.int64(RUNS),
      subset=np.int64(SUBSET), infidelity_noise=noise,
      sensitivity_inputs=perturbed, faithfulness_subsets=subsets.astype(
          np.int16), captum_infidelity=infid,
      captum_infidelity_normalized=infid_norm, captum_sensitivity_max=smax,
      captum_sensitivity_per_draw=per_draw, quantus_faithfulness=faith,
      **{f"params/{k}": v for k, v in flat.items()})
  print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes); captum "
        f"{captum.__version__}, quantus {quantus.__version__}, torch "
        f"{torch.__version__}\ninfidelity {infid}\nnormalized {infid_norm}"
        f"\nsensitivity_max {smax}\nsensitivity_avg {per_draw.mean(1)}"
        f"\nfaithfulness {faith}")


if __name__ == "__main__":
  main()
