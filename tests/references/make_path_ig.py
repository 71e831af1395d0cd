"""Writes path_ig.npz: PAIR saliency's Guided IG and Blur IG of a tiny CNN.

PAIR's numpy implementations (`saliency.core.GuidedIG`, `saliency.core.BlurIG`,
version 0.2.1) take the model as a callback; the callback here evaluates the
SAME Flax model the test explains (models.SmallCNN, width 2, 4 classes), its
gradients computed by JAX in float32. PAIR keeps its own arithmetic in
float64: Guided IG's path and attribution (it casts the image and baseline to
float64), and Blur IG's blurs, finite differences and sums (the image is
given in float64, so scipy blurs in float64). The npz holds the weights
(flattened, keys joined by '/'), the images, baselines, targets, the options
and the maps, so the test depends neither on PAIR nor on an initializer.

Run from the repository root (needs PAIR's `saliency` package):
  python tests/references/make_path_ig.py
"""

import pathlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import saliency.core as pair

from roar_jax import models

OUT = pathlib.Path(__file__).with_name("path_ig.npz")
CLASSES, WIDTH, SHAPE = 4, 2, (16, 16, 3)
GUIDED = dict(x_steps=24, fraction=0.25, max_dist=0.02)
BLUR = dict(steps=20, max_sigma=50.0, grad_step=0.01)
# Guided IG of a quadratic model with tied gradients, under two settings.
TIES = (dict(x_steps=16, fraction=0.3, max_dist=0.1),
        dict(x_steps=12, fraction=0.25, max_dist=1.0))

# PAIR 0.2.1 calls np.quantile(..., interpolation='lower'); numpy 2.4 removed
# that deprecated keyword, whose meaning `method=` took over unchanged.
_QUANTILE = np.quantile


def _quantile(a, q, *args, interpolation=None, **kwargs):
  if interpolation is not None:
    kwargs["method"] = interpolation
  return _QUANTILE(a, q, *args, **kwargs)


np.quantile = _quantile


def _images(rng):
  """Three images; some pixels equal the baseline (Guided IG's x = x0)."""
  images = rng.uniform(0, 1, size=(3,) + SHAPE).astype(np.float32)
  images[0, :4, :4] = 0.0
  baselines = np.zeros((3,) + SHAPE, np.float32)
  baselines[2] = rng.uniform(0, 0.5, size=SHAPE).astype(np.float32)
  baselines[2, 8:, 8:] = images[2, 8:, 8:]
  return images, baselines


def _callback(module, variables):
  """PAIR's call_model_function: float32 gradients of the target logit."""
  grad = jax.jit(jax.grad(lambda x, t: jnp.sum(
      module.apply(variables, x)[:, t])), static_argnums=1)

  def call(x_batch, call_model_args=None, expected_keys=None):
    del expected_keys
    g = grad(jnp.asarray(np.asarray(x_batch), jnp.float32),
             int(call_model_args["target"]))
    return {pair.INPUT_OUTPUT_GRADIENTS: np.asarray(g, np.float64)}

  return call


def quadratic_logits(x, a, c):
  """logit_k = sum_f a_kf x_f^2 / 2 + c_kf x_f; gradient a_k x + c_k.

  a and c take few values (a often 0): many gradients tie exactly."""
  return (jnp.einsum("nhwc,khwc->nk", 0.5 * x * x, a) +
          jnp.einsum("nhwc,khwc->nk", x, c))


def _ties(rng):
  """PAIR's Guided IG of the quadratic model: {name: array}."""
  shape = (2, 8, 8, 2)
  a = rng.choice([0.0, 0.0, 0.5, 1.0, -1.0], size=shape).astype(np.float32)
  c = rng.choice([0.0, 0.25, -0.25, 1.0], size=shape).astype(np.float32)
  x = rng.choice([0.0, 0.5, 1.0], size=(2, 8, 8, 2)).astype(np.float32)
  x += rng.uniform(0, 0.01, size=x.shape).astype(np.float32) * (x > 0)
  t = np.array([0, 1], np.int32)
  grad = jax.jit(lambda p, k: jax.grad(lambda q: jnp.sum(
      quadratic_logits(q, a, c)[:, k]))(p), static_argnums=1)

  def call(x_batch, call_model_args=None, expected_keys=None):
    del expected_keys
    g = grad(jnp.asarray(np.asarray(x_batch), jnp.float32),
             int(call_model_args["target"]))
    return {pair.INPUT_OUTPUT_GRADIENTS: np.asarray(g, np.float64)}

  out = {"ties_a": a, "ties_c": c, "ties_images": x, "ties_targets": t}
  for i, options in enumerate(TIES):
    out[f"ties_guided_ig_{i}"] = np.stack([pair.GuidedIG().GetMask(
        xi, call, {"target": ti}, **options) for xi, ti in zip(x, t)])
    out[f"ties_options_{i}"] = np.array([options["x_steps"],
                                         options["fraction"],
                                         options["max_dist"]])
  return out


def main():
  rng = np.random.default_rng(23)
  module = models.SmallCNN(CLASSES, width=WIDTH)
  images, baselines = _images(rng)
  variables = module.init(jax.random.key(4), images[:1])
  # Larger weights than the initializer's: logits that vary across images.
  variables = jax.tree.map(lambda p: np.asarray(p) * 2.0, variables)
  logits = np.asarray(module.apply(variables, images))
  targets = np.argsort(logits, axis=1)[:, -2].astype(np.int32)  # 2nd best.
  call = _callback(module, variables)
  guided, blurred = [], []
  for x, x0, t in zip(images, baselines, targets):
    args = {"target": t}
    guided.append(pair.GuidedIG().GetMask(
        x, call, args, x_baseline=x0, **GUIDED))
    blurred.append(pair.BlurIG().GetMask(
        x.astype(np.float64), call, args, **BLUR))
  flat = flax.traverse_util.flatten_dict(variables, sep="/")
  np.savez_compressed(
      OUT, images=images, baselines=baselines, targets=targets,
      guided_ig=np.stack(guided), blur_ig=np.stack(blurred),
      guided_options=np.array([GUIDED["x_steps"], GUIDED["fraction"],
                               GUIDED["max_dist"]]),
      blur_options=np.array([BLUR["steps"], BLUR["max_sigma"],
                             BLUR["grad_step"]]),
      **_ties(rng),
      **{f"weights/{k}": np.asarray(v, np.float32) for k, v in flat.items()})
  print(f"wrote {OUT} ({OUT.stat().st_size} bytes); maps' largest |value|:"
        f" guided {np.abs(guided).max():.3g}, blur {np.abs(blurred).max():.3g}")


if __name__ == "__main__":
  main()
