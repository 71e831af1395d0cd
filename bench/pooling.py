"""The small CNNs' max pooling: `models.small_cnn.max_pool_2x2` vs Flax's
`nn.max_pool`, timed in the toy config's training step, side by side.

Both give the same values; they differ in how XLA differentiates them:
`nn.max_pool` (reduce_window) through select_and_scatter, max_pool_2x2
(elementwise maxima of strided slices) through fused selects. The script
checks that one step of each gives the same loss, then prints the median step
time of each (interleaved rounds) and their ratio.

  python bench/pooling.py [--batch 64] [--steps 20] [--rounds 3]
"""

import argparse
import os
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from roar_jax import models
from roar_jax.models import small_cnn
# pylint: enable=g-import-not-at-top,wrong-import-position

POOLS = {
    "nn.max_pool (select_and_scatter gradient)":
        lambda x: nn.max_pool(x, (2, 2), (2, 2)),
    "max_pool_2x2 (the project's)": small_cnn.max_pool_2x2,
}


def make_step(pool, batch: int):
  """The toy model's jitted Adam step with `pool` as its max pooling."""
  small_cnn.max_pool_2x2 = pool  # SmallCNN looks it up when traced.
  module = models.SmallCNN(4, width=16)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, 32, 32, 3)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 4, batch), jnp.int32)
  params = module.init(jax.random.key(0), x[:1])["params"]
  tx = optax.adam(2e-3)

  def loss_fn(p):
    logits = module.apply({"params": p}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def step(p, opt):
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, opt = tx.update(grads, opt, p)
    return optax.apply_updates(p, updates), opt, loss

  state = (params, tx.init(params))
  step(*state)  # Traced now, with this pool.
  return step, state


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  original = small_cnn.max_pool_2x2
  steps = {name: make_step(pool, args.batch) for name, pool in POOLS.items()}
  small_cnn.max_pool_2x2 = original
  losses = [float(step(*state)[2]) for step, state in steps.values()]
  print(f"jax {jax.__version__} on {jax.default_backend()}; toy SmallCNN "
        f"(width 16, 32x32), batch {args.batch}; first-step losses "
        f"{losses[0]:.6f} / {losses[1]:.6f}")
  times = {name: [] for name in steps}
  for _ in range(args.rounds):  # Interleaved, so load hits both alike.
    for name, (step, state) in steps.items():
      p, opt = state
      start = time.perf_counter()
      for _ in range(args.steps):
        p, opt, _ = step(p, opt)
      jax.block_until_ready(p)
      times[name].append((time.perf_counter() - start) / args.steps * 1e3)
  ms = {name: statistics.median(t) for name, t in times.items()}
  for name, value in ms.items():
    print(f"  {name:44s} {value:7.2f} ms per train step")
  flax_ms, ours_ms = ms.values()
  print(f"speed-up of max_pool_2x2 over nn.max_pool: {flax_ms / ours_ms:.2f}x")


if __name__ == "__main__":
  main()
