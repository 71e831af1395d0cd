"""Seeded draws and chunked calls shared by the perturbation metrics.

Infidelity, sensitivity and faithfulness correlation score a map against
random perturbations of its image. Sample s of image i is drawn from
`fold_in(fold_in(fold_in(key(seed), stream), index_i), s)`: a pure function
of the run's seed, the metric's stream, the image's index in the test split
and the sample's number, so a value does not depend on the batch, the
chunking or the number of processes. Each metric calls its jitted kernel on
chunks of a fixed shape (`rows` images x `samples` draws, at most
`metrics.batch_size` model inputs; the last chunk padded), so memory stays
flat and one compilation serves every chunk.
"""

from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

# The metrics' key streams: distinct from the explain stage's (7) and the
# metric maps' (11).
INFIDELITY_STREAM = 21
SENSITIVITY_STREAM = 22
FAITHFULNESS_STREAM = 23


def image_keys(seed: int, stream: int, indices) -> jax.Array:
  """[B] keys: image i's is fold_in(fold_in(key(seed), stream), index_i)."""
  base = jax.random.fold_in(jax.random.key(seed), stream)
  idx = jnp.asarray(np.asarray(indices, np.int64).reshape(-1) % (2**32),
                    jnp.uint32)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(idx)


def sample_keys(keys: jax.Array, samples: jax.Array) -> jax.Array:
  """[b] image keys, [m] sample numbers -> [b, m] keys (traceable)."""
  return jax.vmap(lambda k: jax.vmap(
      lambda s: jax.random.fold_in(k, s))(samples))(keys)


def as_partial(fn: Callable) -> jax.tree_util.Partial:
  """A logits function as a jit argument (its bound weights traced, not
  baked into the compiled program as constants)."""
  if isinstance(fn, jax.tree_util.Partial):
    return fn
  return jax.tree_util.Partial(fn)


def chunk_shape(samples: int, batch_size: int) -> tuple[int, int]:
  """(rows, draws) of one call: `draws` samples of `rows` images, at most
  `batch_size` model inputs (at least one image and one sample)."""
  draws = max(1, min(samples, batch_size))
  return max(1, batch_size // draws), draws


def chunks(num_images: int, samples: int, batch_size: int
           ) -> Iterator[tuple[np.ndarray, np.ndarray, int, int]]:
  """The calls that cover `num_images` x `samples`.

  Yields:
    (rows [r]: image positions, the last one repeated to pad; draws [m]:
     sample numbers, past `samples` to pad; images kept; samples kept).
  """
  rows, draws = chunk_shape(samples, batch_size)
  rows = min(rows, max(1, num_images))  # No padding past a small batch.
  for start in range(0, num_images, rows):
    kept = min(rows, num_images - start)
    r = np.minimum(np.arange(start, start + rows), num_images - 1)
    for first in range(0, samples, draws):
      yield (r, np.arange(first, first + draws, dtype=np.uint32), kept,
             min(draws, samples - first))


def per_sample(kernel: Callable[..., jax.Array], arrays, keys: jax.Array,
               samples: int, batch_size: int) -> np.ndarray:
  """Runs `kernel(*chunk_arrays, chunk_keys, draws) -> [r, m, ...]` over
  every chunk; returns the per-sample values [B, samples, ...] (float64).

  Args:
    kernel: a jitted function of the chunk's rows of `arrays`, their keys
      [r] and the sample numbers [m].
    arrays: per-image arrays [B, ...] (numpy or jax).
    keys: [B] image keys (`image_keys`).
    samples: draws per image.
    batch_size: model inputs per call at most.
  """
  n = int(keys.shape[0])
  out = None
  for rows, draws, kept, kept_draws in chunks(n, samples, batch_size):
    chunk = [a[rows] for a in arrays]
    values = np.asarray(kernel(*chunk, keys[rows], jnp.asarray(draws)),
                        np.float64)
    if out is None:
      out = np.zeros((n, samples) + values.shape[2:], np.float64)
    first = int(draws[0])
    out[rows[0]:rows[0] + kept, first:first + kept_draws] = (
        values[:kept, :kept_draws])
  if out is None:
    raise ValueError("no images to score")
  return out
