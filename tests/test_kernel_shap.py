"""KernelSHAP's sampled path: values against exact Shapley values.

With more segments than the exact path enumerates (2^M - 2 > shap_samples),
KernelSHAP samples coalitions and solves a constrained weighted least squares
problem. These tests check that solve on the sampled path:

- 12 segments, a nonlinear model: the error against the exact Shapley values
  (all 2^12 coalitions enumerated here) is no larger than that of the shap
  library's KernelExplainer on the same number of coalitions
  (bench/kernel_shap_reference.py measured it; it imports this problem);
- 30 segments, a linear model: the closed-form Shapley values
  w_i (x_i - x0_i), summed per segment;
- the efficiency constraint: the values sum to f(x) - f(x0).
"""

import jax
import jax.numpy as jnp
import numpy as np

from roar_jax import saliency
from roar_jax.saliency import surrogate

# The shared problem: a 6x8 one-channel image cut into 2x2 cells (12
# segments), a tanh MLP on its pixels, the black baseline.
HEIGHT, WIDTH, CELL = 6, 8, 2
NUM_IMAGES = 6
SAMPLES = 1000
# Mean over the NUM_IMAGES images and 20 seeds of ||phi - phi_exact|| /
# ||phi_exact|| of shap.KernelExplainer (shap 0.51.0, nsamples=SAMPLES,
# l1_reg=False), measured by `python bench/kernel_shap_reference.py
# --seeds 20` (which also gives ours over keys 0..19: 0.02094).
SHAP_RELATIVE_ERROR = 0.02134
# Our figure is the mean over keys 0..KEYS-1 (one draw is as noisy as one
# shap seed: the two samplers are the same scheme).
KEYS = 8


def grid_segments(height: int, width: int, cell: int) -> np.ndarray:
  """[H, W] labels of a grid of cell x cell squares, row by row."""
  rows, cols = np.meshgrid(np.arange(height) // cell,
                           np.arange(width) // cell, indexing="ij")
  return (rows * (-(-width // cell)) + cols).astype(np.int32)


def mlp_problem():
  """(logits function, images [N, H, W, 1], segments [H, W]): 12 segments."""
  rng = np.random.default_rng(12)
  pixels = HEIGHT * WIDTH
  w1 = rng.normal(size=(pixels, 16)).astype(np.float32) * 2 / np.sqrt(pixels)
  b1 = rng.normal(size=(16,)).astype(np.float32) * 0.5
  w2 = rng.normal(size=(16,)).astype(np.float32)

  def logits(x):
    y = jnp.tanh(x.reshape(x.shape[0], -1) @ w1 + b1) @ w2
    return jnp.stack([y, -y], -1)

  images = rng.normal(size=(NUM_IMAGES, HEIGHT, WIDTH, 1)).astype(np.float32)
  return logits, images, grid_segments(HEIGHT, WIDTH, CELL)


def coalition_values(logits, image, segments) -> np.ndarray:
  """v(S) = f(x on S, 0 elsewhere) for all 2^M coalitions, [2^M] float64.

  Coalition S is the integer whose bit i says whether segment i is in it.
  """
  m = int(segments.max()) + 1
  codes = np.arange(2 ** m)
  bits = (codes[:, None] >> np.arange(m)) & 1  # [2^M, M]
  keep = bits[:, segments]  # [2^M, H, W]
  copies = np.where(keep[..., None] > 0, image[None], 0.0).astype(np.float32)
  return np.asarray(logits(jnp.asarray(copies))[:, 0], np.float64)


def exact_shapley(values: np.ndarray) -> np.ndarray:
  """Shapley values [M] from all coalition values [2^M] (float64)."""
  m = int(np.log2(len(values)))
  codes = np.arange(len(values))
  size = np.array([bin(c).count("1") for c in codes])
  fact = np.array([float(np.prod(np.arange(1, k + 1))) for k in range(m + 1)])
  phi = np.zeros(m)
  for i in range(m):
    without = codes[(codes >> i) & 1 == 0]
    s = size[without]
    weight = fact[s] * fact[m - s - 1] / fact[m]
    phi[i] = np.sum(weight * (values[without | (1 << i)] - values[without]))
  return phi


def relative_error(phi: np.ndarray, exact: np.ndarray) -> float:
  return float(np.linalg.norm(phi - exact) / np.linalg.norm(exact))


def per_segment(maps: np.ndarray, segments: np.ndarray) -> np.ndarray:
  """[N, M] sums of each segment's map values."""
  m = int(segments.max()) + 1
  return np.stack([maps[:, segments == s].sum(axis=(1, 2)) for s in range(m)],
                  axis=1)


def _explain(logits, images, segments, key, baseline=0.0):
  return np.asarray(saliency.explain(
      saliency.Model(logits=logits), images, method="kernel_shap", key=key,
      target=np.zeros(len(images), np.int32), segments=segments,
      shap_samples=SAMPLES, baseline=baseline))


def test_sampled_error_is_no_larger_than_shap_libraries():
  logits, images, segments = mlp_problem()
  games = [coalition_values(logits, x, segments) for x in images]
  exact = np.stack([exact_shapley(v) for v in games])
  errors = []
  for seed in range(KEYS):
    phi = per_segment(_explain(logits, images, segments,
                               jax.random.key(seed)), segments)
    errors.extend(relative_error(p, e) for p, e in zip(phi, exact))
  assert np.mean(errors) <= SHAP_RELATIVE_ERROR, np.mean(errors)
  # Efficiency on the sampled path: the values sum to f(x) - f(x0).
  delta = np.array([v[-1] - v[0] for v in games])
  np.testing.assert_allclose(phi.sum(1), delta, rtol=1e-4)


def test_sampled_linear_model_gives_closed_form_at_30_segments():
  rng = np.random.default_rng(30)
  height, width = 10, 12
  segments = grid_segments(height, width, 2)  # 5 x 6 = 30 segments.
  assert segments.max() + 1 == 30 and 2 ** 30 - 2 > SAMPLES  # Sampled.
  w = rng.normal(size=(height, width, 3)).astype(np.float32)

  def logits(x):
    y = jnp.sum(x * w, axis=(1, 2, 3))
    return jnp.stack([y, -y], -1)

  images = rng.normal(size=(3, height, width, 3)).astype(np.float32)
  x0 = np.float32(-0.25)
  phi = per_segment(_explain(logits, images, segments, jax.random.key(1),
                             baseline=x0), segments)
  contribution = ((images - x0) * w).sum(-1)  # [N, H, W]
  exact = np.stack([contribution[:, segments == s].sum(1)
                    for s in range(30)], 1)
  np.testing.assert_allclose(phi, exact, rtol=1e-4,
                             atol=1e-4 * np.abs(exact).max())


def test_efficiency_holds_on_a_badly_scaled_sampled_problem():
  """A large offset between f(x) and every coalition: the constrained
  direction is the weakest in the Gram matrix, the case a pseudo-inverse
  with a cutoff loses."""
  logits, images, segments = mlp_problem()

  def shifted(x):
    return logits(x) * 40.0 + 3.0 * jnp.sum(x ** 2, axis=(1, 2, 3))[:, None]

  maps = _explain(shifted, images, segments, jax.random.key(5))
  fx = np.asarray(shifted(jnp.asarray(images))[:, 0], np.float64)
  f0 = np.asarray(shifted(jnp.zeros_like(images))[:, 0], np.float64)
  np.testing.assert_allclose(maps.sum(axis=(1, 2, 3)), fx - f0, rtol=1e-4)


def test_enumerated_sizes_follow_shaps_rule():
  """M = 12, 1000 samples: sizes 1, 2 and their complements fit (24 + 132
  coalitions); size 3's 440 would get 844 x 0.334 = 282 samples by its
  share of the kernel mass left, so the enumeration stops (shap's test)."""
  plan = surrogate._shap_plan(  # pylint: disable=protected-access
      jnp.float32(12), 16, SAMPLES, jnp.bool_(False))
  assert int(plan["enumerated"]) == 156
  np.testing.assert_array_equal(np.flatnonzero(plan["full"]),
                                [1, 2, 10, 11])
  # Every proper coalition when exact: 2^6 - 2.
  exact = surrogate._shap_plan(  # pylint: disable=protected-access
      jnp.float32(6), 16, 62, jnp.bool_(True))
  assert int(exact["enumerated"]) == 62


def test_unrank_lists_every_coalition_of_a_size_once():
  valid = jnp.array([True, False, True, True, True, False, True, True])
  unrank = surrogate._unrank  # pylint: disable=protected-access
  bits = jax.vmap(lambda r: unrank(r, jnp.int32(3), valid))(
      jnp.arange(20))  # C(6, 3) = 20 coalitions of 3 of the 6 valid slots.
  bits = np.asarray(bits)
  assert (bits.sum(1) == 3).all() and not bits[:, ~np.asarray(valid)].any()
  assert len({tuple(b) for b in bits}) == 20
