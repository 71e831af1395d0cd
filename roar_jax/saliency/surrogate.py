"""LIME and KernelSHAP: a linear surrogate over superpixels (docs/design.md).

Features are superpixels (`segments.superpixels`: SLIC, or the `segments=`
option); a sample turns some segments off (filled with the baseline). The
samples of all the chunk's images are evaluated together in groups
(`inputs.group_loop`), and the regressions are solved in JAX from sums that
the groups accumulate (weighted Gram matrices), so memory does not grow with
the number of samples. Each image has D feature slots; slots beyond its M
segments are held constant and get exactly 0. A sample's bits depend only on
the image's key, the sample's number and the slot, so maps do not depend on
the batch, the chunking or D.

Map: each segment's value spread evenly over its pixels and channels, so the
map sums to the sum of the values.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from roar_jax.saliency import inputs as inputs_lib
from roar_jax.saliency import perturbation
from roar_jax.saliency import registry
from roar_jax.saliency import segments as segments_lib

Array = jax.Array

LIME_STREAM = 4
SHAP_STREAM = 5


def _slot_uniform(key: Array, slots: int) -> Array:
  """[slots] uniforms, the one of slot f from fold_in(key, f) alone."""
  return jax.vmap(lambda f: jax.random.uniform(jax.random.fold_in(key, f)))(
      jnp.arange(slots))


def _spread(values: Array, inputs: inputs_lib.Inputs) -> Array:
  """Per-segment values [N, D] -> maps: value / (pixels x channels)."""
  segs = inputs.extras["segments"]
  sizes = inputs.extras["segment_sizes"]
  channels = inputs.images.shape[-1]
  per_pixel = values / jnp.maximum(sizes, 1) / channels
  maps = jnp.take_along_axis(per_pixel, segs.reshape(segs.shape[0], -1), 1)
  return jnp.broadcast_to(maps.reshape(segs.shape)[..., None],
                          inputs.images.shape)


def _evaluate_bits(inputs: inputs_lib.Inputs, bits: Array) -> Array:
  """Logits [N, g] of the copies whose segments are on where bits [N, g, D]."""
  segs = inputs.extras["segments"]
  keep = jax.vmap(lambda b, s: b[:, s])(bits, segs)  # [N, g, H, W]
  return perturbation.evaluate(inputs, keep)


def _stats(bits, y, weight):
  """Weighted sums of one group: bits [N, g, D], y, weight [N, g]."""
  wz = weight[..., None] * bits
  return {"w": jnp.sum(weight, 1), "wy": jnp.sum(weight * y, 1),
          "wz": jnp.sum(wz, 1), "wzz": jnp.einsum("ngd,nge->nde", wz, bits),
          "wzy": jnp.einsum("ngd,ng->nd", wz, y)}


@registry.register("lime", prepare=segments_lib.superpixels, random=True,
                   baseline=True)
def lime(inputs: inputs_lib.Inputs) -> Array:
  """Ribeiro et al. (2016): weighted ridge regression of the logit on the
  segments' on/off bits.

  `lime_samples` samples (1000; the first has every segment on), each
  segment on with probability 1/2; weights exp(-d^2 / w^2) with d the cosine
  distance to the all-on sample and w = `lime_kernel_width` (0.25); ridge
  penalty `lime_ridge` (1) on the coefficients, not on the intercept.
  """
  opts = inputs.options
  sizes = inputs.extras["segment_sizes"]
  valid = sizes > 0  # [N, D]
  slots = sizes.shape[1]
  m = jnp.sum(valid, axis=1).astype(jnp.float32)
  keys = inputs.image_keys(LIME_STREAM)

  def body(ids, ok):
    draw = jax.vmap(lambda k: jax.vmap(lambda j: _slot_uniform(
        jax.random.fold_in(k, j), slots))(ids))(keys)  # [N, g, D]
    bits = (draw < 0.5) | (ids[None, :, None] == 0) | ~valid[:, None, :]
    bits = bits.astype(jnp.float32)
    on = jnp.sum(bits * valid[:, None, :], axis=2)
    cosine = jnp.sqrt(on / m[:, None])
    weight = jnp.exp(-jnp.square(1 - cosine) / opts.lime_kernel_width ** 2)
    weight = weight * ok.astype(jnp.float32)
    return _stats(bits, _evaluate_bits(inputs, bits), weight)

  s = inputs_lib.group_loop(opts.lime_samples, perturbation.balanced_group(
      opts.lime_samples, inputs.group_size()), body)
  mean_z = s["wz"] / s["w"][:, None]
  gram = s["wzz"] - s["wz"][:, :, None] * mean_z[:, None, :]
  rhs = s["wzy"] - s["wz"] * (s["wy"] / s["w"])[:, None]
  both = valid[:, :, None] & valid[:, None, :]
  eye = jnp.eye(slots, dtype=jnp.float32)
  gram = jnp.where(both, gram, 0) + opts.lime_ridge * eye + jnp.where(
      valid, 0.0, 1.0)[:, None, :] * eye
  coef = jnp.linalg.solve(gram, jnp.where(valid, rhs, 0)[..., None])[..., 0]
  return _spread(jnp.where(valid, coef, 0), inputs)


@functools.lru_cache(maxsize=None)
def _binomials(slots: int) -> np.ndarray:
  """[slots + 1, slots + 1] int32 table C(p, k), saturated at 2^30."""
  table = np.zeros((slots + 1, slots + 1), np.int64)
  table[:, 0] = 1
  for p in range(1, slots + 1):
    table[p, 1:] = np.minimum(table[p - 1, 1:] + table[p - 1, :-1], 2 ** 30)
  return table.astype(np.int32)


def _shap_plan(m: Array, slots: int, samples: int, exact: Array) -> dict:
  """Which coalition sizes one image enumerates, as the shap library does.

  Sizes go in pairs h and M - h (one size when h = M - h), from h = 1 up.
  A pair is enumerated (every coalition of both sizes, each with its own
  Shapley kernel weight) while the samples left, times the pair's share of
  the kernel mass left, cover its coalitions; the first pair that does not
  fit ends the enumeration. `exact` enumerates every size. The samples left
  are drawn from the other sizes.

  Returns:
    {'full': [D + 1] bool per size k, 'start', 'count': [D // 2 + 1] int32
    first sample and number of samples of pair h, 'enumerated': int32 total,
    'mass': [D + 1] kernel mass (M - 1) / (k (M - k)) of size k, 0 off
    1..M-1}.
  """
  binom = jnp.asarray(_binomials(slots))
  mi = m.astype(jnp.int32)
  k = jnp.arange(slots + 1)
  inside = (k >= 1) & (k <= mi - 1)
  mass = jnp.where(inside, (m - 1) / jnp.maximum(k * (mi - k), 1), 0.0)

  def pair(carry, h):
    budget, left, going, taken = carry
    single = 2 * h == mi
    count = binom[mi, h] * jnp.where(single, 1, 2)
    pair_mass = mass[h] * jnp.where(single, 1.0, 2.0)
    # shap's test: the pair's share of the samples left covers it.
    fits = budget * pair_mass >= count * left * (1 - 1e-6)
    going = going & (h <= mi // 2) & (fits | exact)
    count = jnp.where(going, count, 0)
    carry = (budget - count.astype(jnp.float32),
             left - jnp.where(going, pair_mass, 0.0), going, taken + count)
    return carry, (going, taken, count)

  first = (jnp.float32(samples), jnp.sum(mass), jnp.bool_(True),
           jnp.int32(0))
  (_, _, _, taken), (fulls, starts, counts) = jax.lax.scan(
      pair, first, jnp.arange(1, slots // 2 + 1))
  fulls = jnp.concatenate([jnp.zeros(1, bool), fulls])
  half = jnp.minimum(k, jnp.maximum(mi - k, 0))
  zero = jnp.zeros(1, jnp.int32)
  return {"full": inside & fulls[jnp.minimum(half, slots // 2)],
          "start": jnp.concatenate([zero, starts]),
          "count": jnp.concatenate([zero, counts]), "enumerated": taken,
          "mass": mass}


def _unrank(index: Array, size: Array, valid: Array) -> Array:
  """Coalition number `index` of `size` valid slots (combinatorial number
  system, colexicographic order): [D] bool."""
  slots = valid.shape[0]
  binom = jnp.asarray(_binomials(slots))
  position = jnp.cumsum(valid) - 1  # Rank of each slot among the valid ones.

  def step(carry, f):
    r, left = carry
    c = binom[jnp.maximum(position[f], 0), left]
    take = valid[f] & (left > 0) & (r >= c)
    return (r - jnp.where(take, c, 0), left - take), take

  _, bits = jax.lax.scan(step, (index, size), jnp.arange(slots)[::-1])
  return bits[::-1]


def _listed_bits(j, mi, valid, plan):
  """Enumerated coalition j of one image: (bits [D] bool, weight).

  Each coalition of size k weighs (M - 1) / (C(M, k) k (M - k)); a
  coalition and its complement come side by side.
  """
  slots = valid.shape[0]
  binom = jnp.asarray(_binomials(slots))
  h = jnp.clip(jnp.searchsorted(plan["start"] + plan["count"], j,
                                side="right"), 1, slots // 2)
  r = j - plan["start"][h]
  single = 2 * h == mi
  flip = ~single & (r % 2 == 1)
  bits = _unrank(jnp.where(single, r, r // 2), h, valid)
  bits = jnp.where(flip, valid & ~bits, bits)
  size = jnp.where(flip, mi - h, h)
  listed = binom[mi, size].astype(jnp.float32)
  return bits, plan["mass"][size] / jnp.maximum(listed, 1)


def _ranks(score: Array) -> Array:
  """[D] position of each entry in a stable ascending sort of `score`.

  The same integers as argsort(argsort(score)), from one sort and the
  inverse permutation scattered: XLA:CPU sorts many short rows slowly, and
  the second sort took most of KernelSHAP's time outside the model.
  """
  d = score.shape[-1]
  return jnp.zeros(d, jnp.int32).at[jnp.argsort(score)].set(
      jnp.arange(d, dtype=jnp.int32), unique_indices=True)


def _drawn_bits(key, j, valid, plan, samples):
  """Drawn coalition j of one image: (bits [D] bool, weight).

  Pair q's size is drawn from the sizes not enumerated with probability
  proportional to (M - 1) / (k (M - k)), stratified (the q-th of equal slices
  of the distribution), its members uniformly; the second of the pair is the
  complement. Each weighs the remaining mass over the number drawn.
  """
  slots = valid.shape[0]
  drawn = samples - plan["enumerated"]
  pairs = jnp.maximum((drawn + 1) // 2, 1)
  rest = jnp.where(plan["full"], 0.0, plan["mass"])
  cdf = jnp.cumsum(rest) / jnp.maximum(jnp.sum(rest), 1e-30)
  q = (j - plan["enumerated"]) // 2
  k_size, k_members = jax.random.split(jax.random.fold_in(key, q))
  u = (q + jax.random.uniform(k_size)) / pairs
  k = jnp.minimum(jnp.searchsorted(cdf, u), slots)
  score = jnp.where(valid, _slot_uniform(k_members, slots), jnp.inf)
  picked = _ranks(score) < k
  picked = jnp.where((j - plan["enumerated"]) % 2 == 1, valid & ~picked,
                     picked)
  return picked, jnp.sum(rest) / jnp.maximum(drawn, 1).astype(jnp.float32)


def _shap_bits(key, ids, m, valid, plan, samples, branches):
  """KernelSHAP coalitions `ids` of one image: (bits [g, D], weights [g]).

  The first samples enumerate the sizes `_shap_plan` chose
  (`_listed_bits`), the rest are drawn in complementary pairs
  (`_drawn_bits`). Samples past `samples` weigh 0 (the caller masks them).
  `branches`: two scalar bools, whether any image of the chunk has a listed
  (a drawn) coalition among `ids`. Unbatched, they stay branches under vmap,
  so a group skips the part none of its coalitions uses (the unranking is a
  scan over the slots, the drawing a sort per coalition).
  """
  slots = valid.shape[0]
  mi = m.astype(jnp.int32)
  none = (jnp.zeros(slots, bool), jnp.float32(0))

  def one(j):
    listed = jax.lax.cond(branches[0], lambda: _listed_bits(j, mi, valid,
                                                            plan),
                          lambda: none)
    drawn = jax.lax.cond(branches[1], lambda: _drawn_bits(
        key, j, valid, plan, samples), lambda: none)
    return jax.tree.map(lambda a, b: jnp.where(j < plan["enumerated"], a, b),
                        listed, drawn)

  bits, weight = jax.vmap(one)(ids)
  return bits.astype(jnp.float32), weight


def efficient_solve(gram: Array, rhs: Array, valid: Array,
                    total: Array) -> Array:
  """Weighted least squares under the efficiency constraint, exactly.

  Minimizes phi' G phi - 2 rhs' phi subject to sum(phi) = total over each
  image's valid slots. The constraint is eliminated as the shap library does:
  the last valid slot is phi_L = total - sum of the others, which leaves an
  unconstrained system in the others. So the values sum to `total` up to the
  rounding of one sum, whatever the conditioning (a pseudo-inverse of the KKT
  matrix with the default cutoff can drop the constraint's direction).

  Args:
    gram: [N, D, D] weighted Gram matrices of the coalition bits.
    rhs: [N, D] weighted sums bits * (f(z) - f(x0)).
    valid: [N, D] bool, the slots that are segments (at least one per image).
    total: [N] f(x) - f(x0).

  Returns:
    [N, D] values, exactly 0 on slots that are not segments.
  """
  slots = valid.shape[1]
  last = slots - 1 - jnp.argmax(valid[:, ::-1], axis=1)
  e = jax.nn.one_hot(last, slots, dtype=gram.dtype)  # [N, D]
  free = (valid & (e == 0)).astype(gram.dtype)
  # phi = A psi + total e: A's column j (a free slot) is +1 at j, -1 at L.
  a = jax.vmap(jnp.diag)(free) - e[:, :, None] * free[:, None, :]
  reduced = jnp.einsum("nij,nik,nkl->njl", a, gram, a)
  shifted = rhs - jnp.einsum("nij,nj->ni", gram, e) * total[:, None]
  reduced_rhs = jnp.einsum("nij,ni->nj", a, shifted)
  # Slots that are not free are held at 0 by an identity row; a relative
  # ridge of 1e-6 keeps the system regular when the coalitions do not span
  # every direction (fewer samples than segments), far below the sampling
  # noise otherwise.
  scale = jnp.einsum("nii->n", reduced) / jnp.maximum(jnp.sum(free, 1), 1)
  reduced = reduced + jax.vmap(jnp.diag)(
      (1 - free) + 1e-6 * scale[:, None] * free)
  psi = jnp.linalg.solve(reduced, reduced_rhs[..., None])[..., 0]
  return jnp.einsum("nij,nj->ni", a, psi) + total[:, None] * e


@registry.register("kernel_shap", prepare=segments_lib.superpixels,
                   random=True, baseline=True)
def kernel_shap(inputs: inputs_lib.Inputs) -> Array:
  """Lundberg and Lee (2017): Shapley values of the segments by weighted
  least squares under the efficiency constraint (they sum to f(x) - f(x0)).

  `shap_samples` coalitions (1000): the small sizes enumerated whole and the
  rest drawn, as the shap library does (`_shap_plan`, `_shap_bits`); every
  coalition when the image has few segments (2^M - 2 <= shap_samples), which
  gives the exact Shapley values. Solved by `efficient_solve`.
  """
  opts = inputs.options
  sizes = inputs.extras["segment_sizes"]
  valid = sizes > 0
  n = sizes.shape[0]
  m = jnp.sum(valid, axis=1).astype(jnp.float32)
  exact = 2.0 ** m - 2 <= opts.shap_samples
  keys = inputs.image_keys(SHAP_STREAM)
  fx = inputs.predicted()
  f0 = perturbation.evaluate(
      inputs, jnp.zeros((n, 1) + inputs.images.shape[1:3]))[:, 0]

  plans = jax.vmap(lambda mi, e: _shap_plan(
      mi, valid.shape[1], opts.shap_samples, e))(m, exact)

  def body(ids, ok):
    branches = (jnp.min(ids) < jnp.max(plans["enumerated"]),
                jnp.max(ids) >= jnp.min(plans["enumerated"]))
    bits, weight = jax.vmap(lambda k, mi, v, p: _shap_bits(
        k, ids, mi, v, p, opts.shap_samples, branches))(keys, m, valid, plans)
    weight = weight * ok.astype(jnp.float32)
    y = _evaluate_bits(inputs, bits) - f0[:, None]
    return _stats(bits, y, weight)

  s = inputs_lib.group_loop(opts.shap_samples, perturbation.balanced_group(
      opts.shap_samples, inputs.group_size()), body)
  values = efficient_solve(s["wzz"], s["wzy"], valid, fx - f0)
  return _spread(values, inputs)
