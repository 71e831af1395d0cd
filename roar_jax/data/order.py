"""The global order of training examples: a pure function of (seed, step).

The training stream is one permutation of the split per epoch, drawn from
(seed, epoch), laid end to end. Global batch `step` (0-based) holds stream
positions [step * B, (step + 1) * B), B the global batch size, and process p
of P takes the contiguous share [p * B/P, (p + 1) * B/P) of it. So:
- the global batch of a step is the same whatever the number of processes;
- a run resumed at step s computes its first positions instead of replaying
  the stream from the start, and sees exactly the batches an uninterrupted
  run would (and so ends at the same parameters);
- the position of an example in the stream is a global name for that draw:
  augmentation is seeded by (seed, position), independent of the layout.
"""

import functools

import numpy as np


@functools.lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The order of the split's examples in `epoch` (int64 [num_examples]).

  Numpy's PCG64 seeded by the pair (seed, epoch): independent streams per
  epoch, reproducible on every host. Cached: consecutive batches share it.
  """
  rng = np.random.default_rng([int(seed) % (1 << 63), int(epoch)])
  order = rng.permutation(num_examples).astype(np.int64)
  order.setflags(write=False)
  return order


def local_positions(step, *, global_batch_size: int, process_index: int = 0,
                    process_count: int = 1) -> np.ndarray:
  """Stream positions of this process's share of global batch(es) `step`.

  Args:
    step: 0-based global batch number (an int, or int array [S]).
    global_batch_size: B.
    process_index: p.
    process_count: P; B must be a multiple of P.

  Returns:
    int64 [B / P] (or [S, B / P]): step * B + p * B / P + arange(B / P).
  """
  local = global_batch_size // process_count
  step = np.asarray(step, np.int64)
  return (step[..., None] * global_batch_size + process_index * local +
          np.arange(local, dtype=np.int64))


def example_indices(seed: int, positions, num_examples: int) -> np.ndarray:
  """The split indices at stream positions `positions` (int64, same shape).

  Args:
    seed: the data order's seed.
    positions: int64 stream positions (any shape).
    num_examples: size of the split.

  Returns:
    Indices into the split, in [0, num_examples).
  """
  positions = np.asarray(positions, np.int64)
  epochs, offsets = np.divmod(positions, num_examples)
  out = np.empty_like(positions)
  for epoch in np.unique(epochs):
    where = epochs == epoch
    out[where] = epoch_permutation(seed, int(epoch), num_examples)[
        offsets[where]]
  return out


def global_batch_indices(seed: int, step: int, global_batch_size: int,
                         num_examples: int) -> np.ndarray:
  """The split indices of global batch `step`, in batch order (int64 [B])."""
  return example_indices(
      seed, local_positions(step, global_batch_size=global_batch_size),
      num_examples)
