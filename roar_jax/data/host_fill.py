"""ROAD's linear systems of many images, solved on the host.

The removed values of an image satisfy A u = b with A = D - W (see
`imputation.py`): symmetric positive definite whenever some pixel is kept.
The systems of a chunk of images are stacked into one block-diagonal system
(`stacked_system`, no Python loop over images) and solved in one call, two
ways:

- `harmonic_fill_banded`: numbering the removed pixels in raster order, a
  pixel couples only with removed pixels at most one image row and one
  column away, so A is banded with half-bandwidth at most W + 1 (fewer when
  fewer pixels are removed), and so is the stack of blocks. A banded
  Cholesky factorization (LAPACK's `?pbsv`) costs about n kd^2: for a 32 x
  32 image about 1 MFLOP, no fill-in outside the band and no ordering step,
  which makes it several times faster on a CPU than a general sparse solve
  or the conjugate gradients of `imputation.harmonic_fill` (figures in
  bench/README.md, metrics.py).
- `harmonic_fill_scipy`: the same matrix in CSC form, `scipy.sparse.linalg.
  spsolve`.
"""

import functools
from typing import Callable

import numpy as np
import scipy.linalg.lapack
import scipy.sparse
import scipy.sparse.linalg
import threadpoolctl

from roar_jax.data import road_fill

# Band storage per chunk: (W + 2) x pixels float64 values at most.
CHUNK_BYTES = 64 << 20


@functools.lru_cache(maxsize=1)
def _blas_controller() -> threadpoolctl.ThreadpoolController:
  """The process's thread pools, found once (a search takes ~8 ms)."""
  return threadpoolctl.ThreadpoolController()


def harmonic_fill_banded(x: np.ndarray, removed: np.ndarray) -> np.ndarray:
  """ROAD's system solved by banded Cholesky (`_fill`'s arguments)."""
  return _fill(x, removed, _solve_banded)


def harmonic_fill_scipy(x: np.ndarray, removed: np.ndarray) -> np.ndarray:
  """ROAD's system solved by a sparse LU (`_fill`'s arguments)."""
  return _fill(x, removed, _solve_sparse)


def _fill(x, removed, solve: Callable) -> np.ndarray:
  """Replaces the removed values by the solution of ROAD's linear system.

  Args:
    x: float [B, H, W, C] in [0, 1] units.
    removed: bool [B, H, W, 1] (one mask for every channel) or [B, H, W, C]
      (each channel its own mask). No image (channel) may be removed whole.
    solve: (diag, rhs, couplings) -> the unknowns (`stacked_system`).

  Returns:
    float64 [B, H, W, C]: kept values as given, removed ones solved.
  """
  x = np.asarray(x, dtype=np.float64)
  removed = np.asarray(removed, dtype=bool)
  b, h, w, c = x.shape
  if removed.shape[-1] == 1:
    xs, ms = x, removed[..., 0]  # One matrix, a right-hand side per channel.
  else:
    xs = np.moveaxis(x, -1, 1).reshape(b * c, h, w, 1)
    ms = np.moveaxis(removed, -1, 1).reshape(b * c, h, w)
  whole = ms.all(axis=(1, 2))
  if whole.any():
    # Singular (the solution is any constant), yet rounding may let the
    # factorization through: refuse it here.
    raise ValueError(
        f"fill='noisy_linear' cannot remove every pixel of image "
        f"{np.flatnonzero(whole)[0] // (ms.shape[0] // b)}: nothing is left "
        "to interpolate from (thresholds must lie in (0, 1))")
  out = xs.reshape(-1, xs.shape[-1]).copy()
  per_chunk = max(1, CHUNK_BYTES // (8 * (w + 2) * h * w))
  for start in range(0, ms.shape[0], per_chunk):
    chunk = slice(start, start + per_chunk)
    position, diag, rhs, couplings = stacked_system(xs[chunk], ms[chunk])
    if position.size:
      out[start * h * w + position] = solve(diag, rhs, couplings)
  out = out.reshape(xs.shape)
  if removed.shape[-1] != 1:
    out = np.moveaxis(out.reshape(b, c, h, w), 1, -1)
  return out


def stacked_system(x: np.ndarray, mask: np.ndarray):
  """ROAD's systems of every image of a chunk, as one block-diagonal system.

  For removed pixel i with in-image neighbours N(i):
    (sum_{j in N(i)} w_ij) u_i - sum_{j in N(i), removed} w_ij u_j
        = sum_{j in N(i), kept} w_ij x_j.

  Args:
    x: float64 [N, H, W, K].
    mask: bool [N, H, W], True where removed.

  Returns:
    (position [U]: the unknowns' flat indices into [N * H * W], image-major
     then raster order; diag [U]; rhs [U, K]; couplings: (i, j, weight)
     index arrays with i < j, A[i, j] = A[j, i] = -weight).
  """
  n, h, w, k = x.shape
  m = mask.reshape(-1)
  flat = x.reshape(-1, k)
  position = np.flatnonzero(m)
  unknown = np.cumsum(m) - 1  # Unknown number of each removed position.
  image, pixel = np.divmod(position, h * w)
  row, col = np.divmod(pixel, w)
  diag = np.zeros(position.size)
  rhs = np.zeros((position.size, k))
  couplings = []
  for dy, dx, weight in road_fill.NEIGHBOURS:
    nr, nc = row + dy, col + dx
    inside = (nr >= 0) & (nr < h) & (nc >= 0) & (nc < w)
    diag[inside] += weight
    eq = np.flatnonzero(inside)
    neighbour = image[eq] * (h * w) + nr[eq] * w + nc[eq]
    var = m[neighbour]
    # One neighbour per offset and equation: no repeated index here.
    rhs[eq[~var]] += weight * flat[neighbour[~var]]
    if (dy, dx) > (0, 0):  # Later in raster order: each pair once.
      couplings.append((eq[var], unknown[neighbour[var]], weight))
  return position, diag, rhs, couplings


def _solve_banded(diag, rhs, couplings) -> np.ndarray:
  """LAPACK's banded Cholesky of the stacked system."""
  kd = max([int((j - i).max()) for i, j, _ in couplings if i.size] + [0])
  # Lower band storage: band[r - c, c] = A[r, c] for r >= c.
  band = np.zeros((kd + 1, diag.size), order="F")
  band[0] = diag
  for i, j, weight in couplings:
    band[j - i, i] = -weight
  # The band is narrow: BLAS threads only wait on each other (5x slower on a
  # busy 2-core machine, no faster on an idle one).
  with _blas_controller().limit(limits=1, user_api="blas"):
    _, solution, info = scipy.linalg.lapack.dpbsv(
        band, rhs, lower=1, overwrite_ab=1, overwrite_b=1)
  if info != 0:
    raise ValueError(
        f"fill='noisy_linear': LAPACK's banded Cholesky returned {info}")
  return solution


def _solve_sparse(diag, rhs, couplings) -> np.ndarray:
  """scipy's sparse LU of the stacked system."""
  n = diag.size
  rows = [np.arange(n)] + [a for i, j, _ in couplings for a in (i, j)]
  cols = [np.arange(n)] + [a for i, j, _ in couplings for a in (j, i)]
  vals = [diag] + [np.full(i.size, -weight) for i, _, weight in couplings
                   for _ in range(2)]
  matrix = scipy.sparse.csc_matrix(
      (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
      shape=(n, n))
  solution = scipy.sparse.linalg.spsolve(matrix, rhs)
  return np.asarray(solution).reshape(rhs.shape)
