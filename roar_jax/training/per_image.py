"""Per-image correctness of an evaluation, as a compact record.

A retrain's result keeps which test images its model classifies correctly,
one bit per image in the split's image-index order, so that the report can
pair two units image by image (the per-image bootstrap of
`benchmark/roar/statistics.py`) and a reviewer can rerun every test from the
published files. The bits are `np.packbits` (big-endian bit order) of the
0/1 vector, base64-encoded: 10,000 images take 1,668 characters of JSON.
"""

import base64

import numpy as np


def in_index_order(correct: np.ndarray, index: np.ndarray) -> np.ndarray:
  """The 0/1 correctness of the real rows, sorted by image index.

  Args:
    correct: [R] 0/1 per evaluated row (padded rows included).
    index: [R] the image index of each row; -1 marks a padded row.

  Returns:
    uint8 [N]: one entry per image, in increasing index order.

  Raises:
    ValueError: an image was evaluated twice.
  """
  index = np.asarray(index).reshape(-1)
  correct = np.asarray(correct).reshape(-1)
  real = index >= 0
  index, correct = index[real], correct[real]
  order = np.argsort(index, kind="stable")
  if np.any(np.diff(index[order]) == 0):
    raise ValueError("an evaluation saw an image twice: its per-image record "
                     "would not pair with other units")
  return (correct[order] != 0).astype(np.uint8)


def encode(bits: np.ndarray) -> str:
  """0/1 vector -> base64 text of its packed bits."""
  return base64.b64encode(np.packbits(np.asarray(bits, np.uint8))).decode()


def decode(text: str, count: int) -> np.ndarray:
  """Inverse of `encode`: uint8 [count] of 0/1.

  Args:
    text: what `encode` wrote.
    count: the number of images (packing pads to a multiple of 8).
  """
  try:
    packed = np.frombuffer(base64.b64decode(text, validate=True), np.uint8)
  except (ValueError, TypeError) as e:
    raise ValueError(f"per-image record is not base64: {e}") from None
  if packed.size != -(-count // 8):
    raise ValueError(f"per-image record holds {packed.size * 8} bits, "
                     f"expected {count} images")
  return np.unpackbits(packed)[:count]
