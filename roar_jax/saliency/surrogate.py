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

import jax
import jax.numpy as jnp

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

  s = inputs_lib.group_loop(opts.lime_samples, inputs.group_size(), body)
  mean_z = s["wz"] / s["w"][:, None]
  gram = s["wzz"] - s["wz"][:, :, None] * mean_z[:, None, :]
  rhs = s["wzy"] - s["wz"] * (s["wy"] / s["w"])[:, None]
  both = valid[:, :, None] & valid[:, None, :]
  eye = jnp.eye(slots, dtype=jnp.float32)
  gram = jnp.where(both, gram, 0) + opts.lime_ridge * eye + jnp.where(
      valid, 0.0, 1.0)[:, None, :] * eye
  coef = jnp.linalg.solve(gram, jnp.where(valid, rhs, 0)[..., None])[..., 0]
  return _spread(jnp.where(valid, coef, 0), inputs)


def _shap_bits(key, ids, m, valid, exact):
  """KernelSHAP coalitions `ids` of one image: (bits [g, D], weights [g]).

  Exact (2^M - 2 <= samples): sample j is coalition j + 1 in binary, with
  its Shapley kernel weight (M - 1) / (C(M, k) k (M - k)); samples past the
  2^M - 2 proper coalitions weigh 0. Otherwise: pairs of complementary
  coalitions, the size k drawn with probability proportional to
  (M - 1) / (k (M - k)), the members uniformly; each weighs 1.
  """
  slots = valid.shape[0]
  f = jnp.arange(slots)
  k = jnp.arange(slots + 1, dtype=jnp.float32)

  def exact_one(j):
    code = j + 1
    bits = (jnp.right_shift(code, jnp.minimum(f, 30)) & 1) * (f < 30)
    bits = (bits > 0) & valid
    size = jnp.sum(bits)
    log_binom = (jax.scipy.special.gammaln(m + 1.0) -
                 jax.scipy.special.gammaln(size + 1.0) -
                 jax.scipy.special.gammaln(m - size + 1.0))
    weight = (m - 1) / (jnp.exp(log_binom) * size * (m - size))
    proper = (j < 2 ** jnp.minimum(m, 30).astype(jnp.int32) - 2)
    return bits, jnp.where(proper, weight, 0.0)

  def sampled_one(j):
    pair = jax.random.fold_in(key, j // 2)
    k_size, k_members = jax.random.split(pair)
    sizes_ok = (k >= 1) & (k <= m - 1)
    logits = jnp.where(sizes_ok, jnp.log((m - 1) / jnp.maximum(
        k * (m - k), 1e-9)), -jnp.inf)
    size = jax.random.categorical(k_size, logits)
    score = jnp.where(valid, _slot_uniform(k_members, slots), jnp.inf)
    rank = jnp.argsort(jnp.argsort(score))
    bits = rank < size
    bits = jnp.where(j % 2 == 1, valid & ~bits, bits)
    return bits, jnp.ones((), jnp.float32)

  ex_bits, ex_w = jax.vmap(exact_one)(ids)
  sa_bits, sa_w = jax.vmap(sampled_one)(ids)
  bits = jnp.where(exact, ex_bits, sa_bits).astype(jnp.float32)
  return bits, jnp.where(exact, ex_w, sa_w)


@registry.register("kernel_shap", prepare=segments_lib.superpixels,
                   random=True, baseline=True)
def kernel_shap(inputs: inputs_lib.Inputs) -> Array:
  """Lundberg and Lee (2017): Shapley values of the segments by weighted
  least squares under the efficiency constraint (they sum to f(x) - f(x0)).

  `shap_samples` coalitions (1000), enumerated exactly when the image has
  few segments (see `_shap_bits`).
  """
  opts = inputs.options
  sizes = inputs.extras["segment_sizes"]
  valid = sizes > 0
  n, slots = sizes.shape
  m = jnp.sum(valid, axis=1).astype(jnp.float32)
  exact = 2.0 ** m - 2 <= opts.shap_samples
  keys = inputs.image_keys(SHAP_STREAM)
  fx = inputs.predicted()
  f0 = perturbation.evaluate(
      inputs, jnp.zeros((n, 1) + inputs.images.shape[1:3]))[:, 0]

  def body(ids, ok):
    bits, weight = jax.vmap(lambda k, mi, v, e: _shap_bits(
        k, ids, mi, v, e))(keys, m, valid, exact)
    weight = weight * ok.astype(jnp.float32)
    y = _evaluate_bits(inputs, bits) - f0[:, None]
    return _stats(bits, y, weight)

  s = inputs_lib.group_loop(opts.shap_samples, inputs.group_size(), body)
  both = valid[:, :, None] & valid[:, None, :]
  eye = jnp.eye(slots, dtype=jnp.float32)
  gram = jnp.where(both, s["wzz"], 0) + jnp.where(valid, 0.0, 1.0)[
      :, None, :] * eye
  ones = valid.astype(jnp.float32)
  kkt = jnp.concatenate([
      jnp.concatenate([gram, ones[:, :, None]], axis=2),
      jnp.concatenate([ones[:, None, :], jnp.zeros((n, 1, 1))], axis=2)],
                        axis=1)
  rhs = jnp.concatenate([jnp.where(valid, s["wzy"], 0),
                         (fx - f0)[:, None]], axis=1)
  values = jnp.einsum("nij,nj->ni", jnp.linalg.pinv(kkt), rhs)[:, :slots]
  return _spread(jnp.where(valid, values, 0), inputs)
