"""KernelSHAP against exact Shapley values: ours and the shap library's.

The problem is the one of tests/test_kernel_shap.py (12 segments of a 6x8
image, a tanh MLP, the black baseline), imported from there so that the
figure this prints is measured on exactly what the test checks. For each
image the exact Shapley values come from all 2^12 coalitions; then:

- shap.KernelExplainer with nsamples=1000 and l1_reg=False (over the 12
  segment bits, background all off), `--seeds` runs per image: the mean
  relative error ||phi - phi_exact|| / ||phi_exact|| over images and seeds
  (the constant SHAP_RELATIVE_ERROR of the test);
- roar_jax's kernel_shap with shap_samples=1000, `--seeds` keys: the same
  figure, and the worst |sum(phi) - (f(x) - f(x0))| / |f(x) - f(x0)|.

  pip install shap   # the `bench` extra
  python bench/kernel_shap_reference.py [--seeds 20]
"""

import argparse
import os
import sys
import warnings

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Runnable from a checkout without installing the package; the problem lives
# in the test module.
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

# pylint: disable=g-import-not-at-top,wrong-import-position
import shap
import test_kernel_shap as problem
from roar_jax import saliency


def shap_values(values: np.ndarray, seed: int, samples: int) -> np.ndarray:
  """shap.KernelExplainer's values of the coalition game `values` [2^M]."""
  m = int(np.log2(len(values)))
  powers = 1 << np.arange(m)

  def game(z):
    return values[(np.asarray(z) > 0.5).astype(np.int64) @ powers]

  np.random.seed(seed)  # KernelExplainer draws from numpy's global state.
  explainer = shap.KernelExplainer(game, np.zeros((1, m)))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    phi = explainer.shap_values(np.ones((1, m)), nsamples=samples,
                                l1_reg=False, silent=True)
  return np.asarray(phi).reshape(m)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seeds", type=int, default=20)
  args = parser.parse_args()
  logits, images, segments = problem.mlp_problem()
  games = [problem.coalition_values(logits, x, segments) for x in images]
  exact = np.stack([problem.exact_shapley(v) for v in games])

  theirs = np.array([[problem.relative_error(
      shap_values(v, seed, problem.SAMPLES), e) for seed in range(args.seeds)]
                     for v, e in zip(games, exact)])
  model = saliency.Model(logits=logits)
  ours, gaps = [], []
  for seed in range(args.seeds):
    maps = np.asarray(saliency.explain(
        model, images, method="kernel_shap", key=jax.random.key(seed),
        target=np.zeros(len(images), np.int32), segments=segments,
        shap_samples=problem.SAMPLES, baseline=0.0))
    phi = problem.per_segment(maps, segments)
    ours.append([problem.relative_error(p, e) for p, e in zip(phi, exact)])
    delta = np.array([v[-1] - v[0] for v in games])
    gaps.append(np.max(np.abs(phi.sum(1) - delta) / np.abs(delta)))
  ours = np.array(ours)
  print(f"shap {shap.__version__}, {problem.SAMPLES} coalitions, "
        f"{len(images)} images x {args.seeds} seeds")
  print(f"shap.KernelExplainer  mean relative error {theirs.mean():.5f} "
        f"(per image {np.round(theirs.mean(1), 4).tolist()})")
  print(f"roar_jax kernel_shap  mean relative error {ours.mean():.5f} "
        f"(per image {np.round(ours.mean(0), 4).tolist()}), "
        f"worst efficiency gap {max(gaps):.2e}")


if __name__ == "__main__":
  main()
