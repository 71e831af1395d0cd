"""Expected Gradients (Erion et al., 2021), Captum's GradientShap.

The map of image x is the mean over S samples of (x - x0) * grad f(x0 +
alpha (x - x0)), each sample drawing a reference x0 uniformly from the
`references=` option [R, H, W, C] (the explain stage passes training images,
as for DeepSHAP) and alpha ~ U(0, 1). It is integrated gradients with the
baseline and the point on the path both sampled, so its sum tends to
f(x) - mean_r f(x0_r) as S grows (exactly so in expectation).

Captum's GradientShap also adds Gaussian noise of `stdevs` to x before each
sample; its default, 0, is what this estimator computes.

Sample j of an image draws from fold_in(its key, j) alone, so the draws do not
depend on the batch the image is in, on the chunking or on how samples are
grouped (`draws` returns them, for tests and for feeding a peer the same
points).
"""

import jax
import jax.numpy as jnp

from roar_jax.saliency import inputs as inputs_lib
from roar_jax.saliency import registry

Array = jax.Array

# Folded into an image's key: Expected Gradients' draws share no random
# numbers with the other random methods (controls.py, perturbation.py,
# surrogate.py use 1 to 5).
EG_STREAM = 6


def draws(image_keys: Array, samples: int,
          num_references: int) -> tuple[Array, Array]:
  """The (reference index, alpha) of every sample of every image.

  Args:
    image_keys: [N] keys, one per image (`inputs.image_keys(EG_STREAM)`).
    samples: S, samples per image.
    num_references: R, references to draw from.

  Returns:
    (reference indices [N, S] int32 in [0, R), alphas [N, S] float32 in
    [0, 1)); sample j of image i depends on image_keys[i] and j alone.
  """
  def one(key, j):
    ref_key, alpha_key = jax.random.split(jax.random.fold_in(key, j))
    return (jax.random.randint(ref_key, (), 0, num_references, jnp.int32),
            jax.random.uniform(alpha_key, (), jnp.float32))

  ids = jnp.arange(samples, dtype=jnp.int32)
  return jax.vmap(lambda k: jax.vmap(lambda j: one(k, j))(ids))(image_keys)


def from_draws(inputs: inputs_lib.Inputs, references: Array, ref_ids: Array,
               alphas: Array) -> Array:
  """mean_s (x - x0_s) * grad f(x0_s + alpha_s (x - x0_s)), given the draws.

  Args:
    inputs: the batch (its images, targets and model).
    references: [R, H, W, C].
    ref_ids: [N, S] reference index of every sample.
    alphas: [N, S] position of every sample on its path.

  Returns:
    [N, H, W, C] maps. The samples are taken in groups (a `group_loop`), so
    memory does not grow with S.
  """
  x = inputs.images
  n, s = ref_ids.shape
  group = min(s, inputs.group_size(rows_per_sample=1, forward_only=False))

  def body(ids, valid):
    cols = jnp.minimum(ids, s - 1)  # The padding of the last group.
    x0 = jnp.swapaxes(references[ref_ids[:, cols]], 0, 1)  # [g, N, ...]
    a = alphas[:, cols].T.astype(x.dtype).reshape((group, n) + (1,) * 3)
    delta = x[None] - x0
    grads = inputs.gradient_at(x0 + a * delta)
    keep = valid.astype(x.dtype).reshape((group,) + (1,) * 4)
    return jnp.sum(delta * grads * keep, axis=0)

  return inputs_lib.group_loop(s, group, body) / s


def _samples(options) -> int:
  return options.eg_samples


@registry.register("expected_gradients", evaluations=_samples, random=True,
                   references=True)
def expected_gradients(inputs: inputs_lib.Inputs) -> Array:
  """Expected Gradients over the `references=` option, `eg_samples` samples.

  The map sums to f(x) - mean_r f(x0_r) in expectation over the draws.
  """
  refs = inputs.shared.get("references")
  if refs is None:
    raise ValueError(f"method {inputs.method!r} needs references=[R, H, W, C]"
                     " (e.g. 16 training images in the model's input space)")
  ref_ids, alphas = draws(inputs.image_keys(EG_STREAM),
                          inputs.options.eg_samples, refs.shape[0])
  return from_draws(inputs, refs.astype(inputs.images.dtype), ref_ids,
                    alphas)
