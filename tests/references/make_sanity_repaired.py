"""Reference scores of the repaired randomization tests, from Quantus 0.6.

Writes tests/references/sanity_repaired.npz, which
tests/test_sanity_repaired.py compares roar_jax's bottom-up/top-down/
independent MPRT, eMPRT, sMPRT and random-logit scores against.

The model is a narrow SmallCNN (width 4, 10 classes) on six 16 x 16 RGB
inputs, at its initial weights (a comparison of test machinery needs no
training). Quantus runs on its torch twin (bench/torch_twins.py). The
randomized weights are roar_jax's: each layer's re-initialization
(`randomization.fresh_layer`, init 'original') is exported into the twin by
replacing the `reset_parameters` that Quantus's layer generator calls, so
both sides randomize to the same arrays; the script checks, at every step,
that the twin's weights equal roar_jax's `randomization.randomize` of the
same layers. Quantus's explain_func returns roar_jax's own `gradient` maps
of the twin's current weights (converted back to Flax), for the classes
Quantus asks for; SmoothMPRT ignores explain_func and calls
`quantus.explain`, which is pointed at the same function.

The noise of SmoothMPRT is NumPy's global generator seeded with
SMOOTH_SEED just before the call: the test regenerates it from that seed
(49 draws of randn(N, C, H, W) per smoothed batch, in Quantus's call
order), and this script checks that regeneration against the inputs Quantus
actually passed.

  python tests/references/make_sanity_repaired.py

Needs torch and quantus (not the test extra). TensorFlow, which Quantus
imports when it is installed, is kept out (it crashes beside torch here).
"""

import os
import sys

import numpy as np

sys.modules["tensorflow"] = None  # Quantus then takes the torch path alone.

# pylint: disable=g-import-not-at-top,wrong-import-position
import torch
import jax
import jax.numpy as jnp
import quantus

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from bench import torch_twins
from roar_jax import models
from roar_jax.benchmark.sanity import randomization
from roar_jax.saliency import explainable
from roar_jax.saliency import explaining as saliency_api
# pylint: enable=g-import-not-at-top,wrong-import-position

OUT = os.path.join(ROOT, "tests", "references", "sanity_repaired.npz")
N, SIZE, WIDTH, CLASSES = 6, 16, 4, 10
LAYERS = ("conv1", "conv2", "conv3", "logits")
RANDOMIZATION_SEED = 7  # roar_jax's key for the re-initialization.
SMOOTH_SEED = 11
MODULE = models.SmallCNN(CLASSES, width=WIDTH)


def gradient_maps(params, images, targets) -> np.ndarray:
  """roar_jax's `gradient` maps [N, H, W, C] of a SmallCNN."""
  model = explainable(MODULE, {"params": params})
  maps = saliency_api.explain_all(
      model, jnp.asarray(images, jnp.float32), methods=("gradient",),
      target=jnp.asarray(targets, jnp.int32))
  return np.asarray(maps["gradient"], np.float64)


def flax_params(net) -> dict:
  """The twin's current weights as Flax SmallCNN params."""
  def conv(c):
    return {"kernel": jnp.asarray(c.weight.detach().numpy()
                                  .transpose(2, 3, 1, 0)),
            "bias": jnp.asarray(c.bias.detach().numpy())}
  out = {name: conv(c) for name, c in zip(LAYERS[:3], net.convs)}
  out["logits"] = {"kernel": jnp.asarray(net.fc.weight.detach().numpy().T),
                   "bias": jnp.asarray(net.fc.bias.detach().numpy())}
  return out


class Calls:
  """explain_func for Quantus: our maps of the model it passes; logs every
  call (the inputs and classes) and every set of weights it sees."""

  def __init__(self):
    self.inputs, self.targets, self.params = [], [], []

  def __call__(self, model, inputs, targets, **kwargs):
    del kwargs
    params = flax_params(model)
    x = np.asarray(inputs, np.float32).transpose(0, 2, 3, 1)
    self.inputs.append(np.asarray(inputs))
    self.targets.append(np.asarray(targets))
    self.params.append(params)
    return gradient_maps(params, x, targets).transpose(0, 3, 1, 2)


def fresh_layers(variables) -> dict:
  """roar_jax's re-initialization of every layer (what randomize uses)."""
  key = jax.random.key(RANDOMIZATION_SEED)
  return {name: randomization.fresh_layer(
      MODULE, variables, name, key, init="original",
      input_shape=(SIZE, SIZE, 3))["params"] for name in LAYERS}


class _Fresh:
  """Mixed into a twin layer: reset_parameters loads roar_jax's values."""

  def reset_parameters(self):
    fresh = getattr(self, "fresh", None)
    if fresh is None:  # During construction.
      super().reset_parameters()
    elif isinstance(self, torch.nn.Conv2d):
      torch_twins.set_conv(self, fresh)
    else:
      torch_twins.set_dense(self, fresh)


class FreshConv(_Fresh, torch.nn.Conv2d):
  pass


class FreshLinear(_Fresh, torch.nn.Linear):
  pass


def twin(params, fresh) -> torch.nn.Module:
  """The torch twin whose layers re-initialize to roar_jax's arrays."""
  net = torch_twins.small_cnn(jax.tree.map(np.asarray, params))
  for conv, name in zip(net.convs, LAYERS[:3]):
    conv.__class__ = FreshConv
    conv.fresh = jax.tree.map(np.asarray, fresh[name])
  net.fc.__class__ = FreshLinear
  net.fc.fresh = jax.tree.map(np.asarray, fresh["logits"])
  return net.eval()


def check_weights(calls: Calls, params, fresh):
  """Every weight set Quantus explained is the trained one or roar_jax's
  randomize() of some layers: the two sides randomized alike."""
  key = jax.random.key(RANDOMIZATION_SEED)
  candidates = [params]
  for k in range(1, len(LAYERS) + 1):
    for layers in (LAYERS[:k], LAYERS[-k:], (LAYERS[k - 1],)):
      candidates.append(randomization.randomize(
          MODULE, {"params": params}, layers, key,
          input_shape=(SIZE, SIZE, 3))["params"])
  for seen in calls.params:
    assert any(all(np.array_equal(np.asarray(a), np.asarray(b))
                   for a, b in zip(jax.tree.leaves(seen),
                                   jax.tree.leaves(c)))
               for c in candidates), "twin weights differ from roar_jax's"
  del fresh


def scores_table(scores: dict) -> np.ndarray:
  """Quantus's {'original' or layer: [N]} as [1 + L, N], in its order."""
  return np.array([scores[k] for k in scores], np.float64)


def run_mprt(net, x, y, calls):
  out = {}
  for order in ("top_down", "bottom_up", "independent"):
    metric = quantus.MPRT(layer_order=order, disable_warnings=True)
    scores = metric(model=net, x_batch=x, y_batch=y, explain_func=calls,
                    device="cpu", batch_size=N)
    out[f"mprt_{order}_layers"] = np.array(list(scores))
    out[f"mprt_{order}"] = scores_table(scores)
  return out


def run_emprt(net, x, y, calls):
  metric = quantus.EfficientMPRT(disable_warnings=True)
  scores = metric(model=net, x_batch=x, y_batch=y, explain_func=calls,
                  device="cpu", batch_size=N)
  layers = list(metric.explanation_scores_by_layer)
  return {"emprt": np.array(scores, np.float64),
          "emprt_n_bins": np.int64(metric.complexity_func_kwargs["n_bins"]),
          "emprt_complexity": np.array(
              [metric.explanation_scores_by_layer[k] for k in
               (layers[0], layers[-1])], np.float64)}


def run_smprt(net, x, y, calls):
  """SmoothMPRT with its defaults; checks the regenerated noise."""
  metric = quantus.SmoothMPRT(disable_warnings=True)
  quantus.explain = calls  # SmoothMPRT calls quantus.explain, not ours.
  start = len(calls.inputs)
  np.random.seed(SMOOTH_SEED)
  scores = metric(model=net, x_batch=x, y_batch=y, explain_func=calls,
                  device="cpu", batch_size=N)
  seen = calls.inputs[start:]
  rng = np.random.RandomState(SMOOTH_SEED)
  std = metric.noise_magnitude * (x.max(axis=(1, 2, 3), keepdims=True)
                                  - x.min(axis=(1, 2, 3), keepdims=True))
  for k, inputs in enumerate(seen):
    eps = (np.zeros_like(x) if k % metric.nr_samples == metric.nr_samples - 1
           else rng.randn(*x.shape) * std)
    assert np.array_equal(inputs, x + eps), f"noise of call {k} differs"
  return {"smprt_layers": np.array(list(scores)),
          "smprt": scores_table(scores),
          "smprt_nr_samples": np.int64(metric.nr_samples),
          "smprt_noise_magnitude": np.float64(metric.noise_magnitude),
          "smprt_seed": np.int64(SMOOTH_SEED),
          "smprt_batches": np.int64(len(seen) // metric.nr_samples)}


def run_random_logit(net, x, y, calls):
  """RandomLogit with its defaults, one image per batch (its normalization
  by the batch's maximum is then per image, as ours)."""
  metric = quantus.RandomLogit(num_classes=CLASSES, disable_warnings=True)
  start = len(calls.targets)
  scores = metric(model=net, x_batch=x, y_batch=y, explain_func=calls,
                  device="cpu", batch_size=1)
  targets = np.concatenate(calls.targets[start:])
  # Per image: the explained class, then the random other class.
  return {"random_logit": np.array(scores, np.float64).ravel(),
          "random_logit_off": targets.reshape(N, 2)[:, 1],
          "random_logit_draw": np.random.RandomState(metric.seed).randint(
              0, CLASSES - 1, 1)}


def main():
  variables = MODULE.init(jax.random.key(0),
                          jnp.zeros((1, SIZE, SIZE, 3), jnp.float32))
  params = variables["params"]
  rng = np.random.default_rng(0)
  images = rng.standard_normal((N, SIZE, SIZE, 3)).astype(np.float32)
  labels = rng.integers(0, CLASSES, N).astype(np.int64)
  fresh = fresh_layers(variables)
  x = images.transpose(0, 3, 1, 2).copy()
  calls = Calls()
  out = {}
  out.update(run_mprt(twin(params, fresh), x, labels, calls))
  out.update(run_emprt(twin(params, fresh), x, labels, calls))
  out.update(run_random_logit(twin(params, fresh), x, labels, calls))
  check_weights(calls, params, fresh)
  out.update(run_smprt(twin(params, fresh), x, labels, calls))
  flat = {}
  for name in LAYERS:
    for leaf in ("kernel", "bias"):
      flat[f"params/{name}/{leaf}"] = np.asarray(params[name][leaf])
      flat[f"fresh/{name}/{leaf}"] = np.asarray(fresh[name][leaf])
  np.savez_compressed(OUT, images=images, labels=labels,
                      quantus_version=quantus.__version__,
                      randomization_seed=np.int64(RANDOMIZATION_SEED),
                      **flat, **out)
  for k, v in sorted(out.items()):
    print(k, np.round(v, 4) if np.asarray(v).dtype.kind == "f" else v)
  print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
  main()
