"""The perturbation methods' faster loops give the maps of direct computations.

Occlusion, RISE, LIME and KernelSHAP run their samples in `group_loop` steps
of `perturbation.balanced_group` samples (no padded last group), and
KernelSHAP skips the part of a group none of its coalitions uses and ranks
slots with one sort. Maps at evaluation budgets that give different groups
(a few samples per step, balanced groups, all samples in one step) must agree
with each other and with direct computations of the same formulas.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from roar_jax import saliency
from roar_jax.saliency import perturbation
from roar_jax.saliency import surrogate

pytestmark = pytest.mark.usefixtures("fast_compiles")

KEY = jax.random.key(3)
RNG = np.random.default_rng(0)
# A small nonlinear model of 8 x 8 x 2 images, 3 classes.
W = RNG.normal(size=(128, 3)).astype(np.float32) / 8
X = RNG.normal(size=(3, 8, 8, 2)).astype(np.float32)
T = np.array([0, 2, 1], np.int32)
# Evaluation budgets: 1 explains one image per chunk, up to 4 samples per
# step; 5 two images per chunk (the last padded), up to 10 samples per step;
# 4096 every image and every sample in one step.
BUDGETS = (1, 5, 4096)


def _logits(x):
  return jnp.tanh(x.reshape(x.shape[0], -1) @ W) * 3.0


MODEL = saliency.Model(logits=_logits)


def _target(x, t):
  return np.asarray(_logits(jnp.asarray(x)))[np.arange(len(x)), t]


def test_balanced_group():
  # (total, group) -> samples per step: the same steps, the least padding.
  cases = {(49, 8): 7, (49, 16): 13, (49, 25): 25, (64, 16): 16,
           (1000, 8): 8, (100, 30): 25, (5, 100): 5, (7, 1): 1}
  for (total, group), want in cases.items():
    got = perturbation.balanced_group(total, group)
    assert got == want, (total, group, got)
    assert -(-total // got) == -(-total // min(group, total))
    assert -(-total // got) * got - total < -(-total // got)


def test_occlusion_equals_direct_windows():
  window, stride = 3, 2  # Starts 0, 2, 4, 5: 16 windows, uneven cover.
  maps = [np.asarray(saliency.explain(
      MODEL, X, method="occlusion", target=T, baseline=0.5,
      occlusion_window=window, occlusion_stride=stride,
      evaluations_per_step=b)) for b in BUDGETS]
  fx = _target(X, T)
  total, cover = np.zeros(X.shape[:3]), np.zeros(X.shape[1:3])
  for top in (0, 2, 4, 5):
    for left in (0, 2, 4, 5):
      x = X.copy()
      x[:, top:top + window, left:left + window] = 0.5
      drop = fx - _target(x, T)
      total[:, top:top + window, left:left + window] += drop[:, None, None]
      cover[top:top + window, left:left + window] += 1
  direct = np.broadcast_to((total / cover)[..., None], X.shape)
  for m in maps:
    np.testing.assert_allclose(m, direct, rtol=1e-5, atol=1e-6)


def test_rise_equals_direct_sum_over_masks():
  n, cells, keep = 21, 3, 0.5  # 21 masks: a padded last group before.
  maps = [np.asarray(saliency.explain(
      MODEL, X, method="rise", target=T, baseline=0.0, key=KEY,
      rise_masks=n, rise_cells=cells, rise_keep=keep,
      evaluations_per_step=b)) for b in BUDGETS]
  direct = np.zeros(X.shape[:3])
  for i in range(len(X)):
    k = jax.random.fold_in(jax.random.fold_in(KEY, i), perturbation.RISE_STREAM)
    masks = np.asarray(perturbation.rise_masks(k, jnp.arange(n), 8, 8, cells,
                                               keep))
    copies = X[i][None] * masks[..., None]
    p = np.asarray(jax.nn.softmax(_logits(jnp.asarray(copies))))[:, T[i]]
    direct[i] = np.einsum("g,ghw->hw", p, masks) / (n * keep)
  for m in maps:
    np.testing.assert_allclose(m, np.broadcast_to(direct[..., None], X.shape),
                               rtol=1e-5, atol=1e-6)


SEGMENTS = (np.arange(8)[:, None] // 2 * 4 + np.arange(8)[None, :] // 2)


@pytest.mark.parametrize("method,samples", [("lime", 23),
                                            ("kernel_shap", 128)])
def test_surrogates_agree_across_groupings(method, samples):
  # 16 segments; KernelSHAP with 128 samples lists the 32 coalitions of
  # sizes 1 and 15 first and draws 96: its groups hold listed, drawn or both
  # kinds. (With 23 samples the few complementary
  # pairs leave the least squares so ill-conditioned that rounding alone
  # moves the values by percents, before these changes as after.)
  opts = {"lime_samples" if method == "lime" else "shap_samples": samples}
  maps = [np.asarray(saliency.explain(
      MODEL, X, method=method, target=T, baseline=0.0, key=KEY,
      segments=SEGMENTS, evaluations_per_step=b, **opts)) for b in BUDGETS[1:]]
  scale = np.abs(maps[-1]).max()
  for m in maps[:-1]:
    np.testing.assert_allclose(m, maps[-1], rtol=1e-4, atol=1e-5 * scale)


def test_shap_bits_skipping_matches_computing_both():
  slots, samples, m = 32, 128, 16
  valid = jnp.arange(slots) < m
  plan = surrogate._shap_plan(  # pylint: disable=protected-access
      jnp.float32(m), slots, samples, jnp.bool_(False))
  assert int(plan["enumerated"]) == 32
  shap_bits = surrogate._shap_bits  # pylint: disable=protected-access
  bits_of = jax.jit(lambda ids, branches: shap_bits(
      KEY, ids, jnp.float32(m), valid, plan, samples, branches))
  yes, no = jnp.bool_(True), jnp.bool_(False)
  ids = jnp.arange(16, 48)
  both = bits_of(ids, (yes, yes))
  # Ids 16..31 are listed coalitions, 32..47 drawn ones.
  for part, branches in ((ids[:16], (yes, no)), (ids[16:], (no, yes))):
    got = bits_of(part, branches)
    np.testing.assert_array_equal(got[0], both[0][part - 16])
    np.testing.assert_array_equal(got[1], both[1][part - 16])
  bits = np.asarray(both[0])
  assert (bits[:16].sum(1) % 14 == 1).all()  # Sizes 1 and 15.
  assert not bits[:, m:].any()


def test_ranks_equal_double_argsort_with_ties():
  score = jax.random.uniform(jax.random.key(1), (200, 40))
  score = jnp.where(score < 0.3, jnp.inf, jnp.round(score * 20) / 20)
  got = jax.vmap(surrogate._ranks)(score)  # pylint: disable=protected-access
  want = jnp.argsort(jnp.argsort(score, axis=1), axis=1)
  np.testing.assert_array_equal(got, want)
