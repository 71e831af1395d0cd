"""ROAD's noisy linear imputation (Rong et al. 2022): its definition.

Every removed pixel is the weighted mean of its 8 neighbours (1/6 direct,
1/12 diagonal, renormalized where a neighbour lies outside the image), solved
jointly for all removed pixels of an image as one sparse linear system, plus
Gaussian noise of std 0.01 in [0, 1] pixel units, a pure function of the run
seed and the image's index. `noisy_linear_fill` solves one image with scipy:
the reference that the batched solvers (`imputation.py`, `host_fill.py`) are
tested against; the constants and the noise are shared with them.
"""

import numpy as np
import scipy.sparse
import scipy.sparse.linalg

# ROAD's noise: std 0.01 on the [0, 1] pixel scale (the released code's
# default, `NoisyLinearImputer(noise=0.01)`).
NOISY_LINEAR_STD = 0.01
# (row offset, column offset, weight) of the 8 neighbours; the weights sum to 1.
NEIGHBOURS = ((-1, 0, 1 / 6), (1, 0, 1 / 6), (0, -1, 1 / 6), (0, 1, 1 / 6),
              (-1, -1, 1 / 12), (-1, 1, 1 / 12), (1, -1, 1 / 12),
              (1, 1, 1 / 12))


def noise_rng(seed: int, index: int) -> np.random.Generator:
  """The generator of one image's noise, a pure function of (seed, index)."""
  if seed < 0 or index < 0:
    raise ValueError(f"seed={seed} and index={index} must be non-negative")
  return np.random.default_rng([int(seed), int(index)])


def noisy_linear_fill(image: np.ndarray, removed: np.ndarray, *, seed: int,
                      index: int, noise_std: float = NOISY_LINEAR_STD
                      ) -> np.ndarray:
  """ROAD's noisy linear imputation of one image.

  Args:
    image: uint8 [H, W, C].
    removed: bool [H, W, 1] (pixel granularity) or [H, W, C] (each channel
      its own mask), True where the value is replaced.
    seed: run seed; with `index` it fixes the noise.
    index: the image's global index in its split.
    noise_std: std of the Gaussian noise, in [0, 1] pixel units.

  Returns:
    uint8 [H, W, C]: kept values unchanged, removed ones imputed.
  """
  height, width, channels = image.shape
  # The noise is drawn for every value, used only where removed: a position
  # gets the same noise whatever else is removed (every threshold, ROAR and
  # KAR), and the draw does not depend on the mask.
  noise = noise_rng(seed, index).normal(0.0, noise_std,
                                        size=(height, width, channels))
  x = image.astype(np.float64) / 255.0
  out = image.copy()
  if removed.shape[-1] == 1:
    groups = [(removed[..., 0], slice(None))]
  else:
    groups = [(removed[..., c], slice(c, c + 1)) for c in range(channels)]
  for mask, chans in groups:
    if not mask.any():
      continue
    if mask.all():
      where = ("" if removed.shape[-1] == 1 else
               f" (channel {chans.start})")
      raise ValueError(
          f"fill='noisy_linear' cannot remove every pixel of image {index}"
          f"{where}: nothing is left to interpolate from. Use a ROAR "
          "threshold below 1, a KAR threshold above 0, or fill='channel_mean'")
    values = _harmonic_fill(x[:, :, chans], mask)
    rows, cols = np.nonzero(mask)
    values = values + noise[rows, cols][:, chans]
    out[rows, cols, chans] = np.floor(
        np.clip(values, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
  return out


def _harmonic_fill(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Solves for the removed values: each equals its neighbours' weighted mean.

  For removed pixel i with in-image neighbours N(i):
    (sum_{j in N(i)} w_ij) x_i - sum_{j in N(i), removed} w_ij x_j
        = sum_{j in N(i), kept} w_ij x_j,
  one equation per removed pixel, one right-hand side per channel. Leaving
  out-of-image neighbours out of the diagonal renormalizes the weights at the
  border. Every 8-connected region of removed pixels that is not the whole
  image touches a kept pixel, so the system is non-singular.

  Args:
    x: float64 [H, W, K] image in [0, 1].
    mask: bool [H, W], True where removed (not all True).

  Returns:
    float64 [N, K]: the values of the removed pixels, in row-major order.
  """
  height, width, k = x.shape
  rows, cols = np.nonzero(mask)
  n = rows.size
  unknown_id = np.full(height * width, -1, dtype=np.int64)
  unknown_id[rows * width + cols] = np.arange(n)
  flat = x.reshape(-1, k)
  diag = np.zeros(n)
  rhs = np.zeros((n, k))
  a_rows, a_cols, a_vals = [], [], []
  for dy, dx, w in NEIGHBOURS:
    nr, nc = rows + dy, cols + dx
    inside = (nr >= 0) & (nr < height) & (nc >= 0) & (nc < width)
    diag[inside] += w
    eq = np.nonzero(inside)[0]
    nflat = nr[inside] * width + nc[inside]
    nid = unknown_id[nflat]
    var = nid >= 0
    a_rows.append(eq[var])
    a_cols.append(nid[var])
    a_vals.append(np.full(var.sum(), -w))
    # One equation gets at most one neighbour per offset: no repeated index.
    rhs[eq[~var]] += w * flat[nflat[~var]]
  a_rows.append(np.arange(n))
  a_cols.append(np.arange(n))
  a_vals.append(diag)
  matrix = scipy.sparse.csc_matrix(
      (np.concatenate(a_vals),
       (np.concatenate(a_rows), np.concatenate(a_cols))), shape=(n, n))
  solution = scipy.sparse.linalg.spsolve(matrix, rhs)
  return np.asarray(solution, dtype=np.float64).reshape(n, k)
