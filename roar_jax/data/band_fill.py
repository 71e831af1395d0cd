"""ROAD's linear system solved on the host by banded Cholesky.

The removed values of an image satisfy A u = b with A = D - W (see
`imputation.py`): symmetric positive definite whenever some pixel is kept.
Numbering the removed pixels in raster order, pixel i couples only with
removed pixels at most one image row and one column away, so A is banded
with half-bandwidth at most W + 1 (fewer when fewer pixels are removed).
A banded Cholesky factorization (LAPACK's `?pbsv`) costs about n kd^2: for a
32 x 32 image about 1 MFLOP, no fill-in outside the band and no ordering
step, which makes it several times faster on a CPU than a general sparse
solve (`harmonic_fill_scipy`) or the conjugate gradients of `harmonic_fill`
(figures in bench/README.md, metrics.py).

The systems of many images are stacked into one block-diagonal band matrix
(its blocks do not couple, so its band is the widest block's) and solved by
one LAPACK call per chunk of images: no Python loop over images.
"""

import functools

import numpy as np
import scipy.linalg.lapack
import threadpoolctl

from roar_jax.data import degradation as degrade_lib

# Band storage per chunk: (kd + 1) x unknowns float64 values at most.
CHUNK_BYTES = 64 << 20


@functools.lru_cache(maxsize=1)
def _blas_controller() -> threadpoolctl.ThreadpoolController:
  """The process's thread pools, found once (a search takes ~8 ms)."""
  return threadpoolctl.ThreadpoolController()


def harmonic_fill_banded(x: np.ndarray, removed: np.ndarray) -> np.ndarray:
  """Replaces the removed values by the solution of ROAD's linear system.

  Args:
    x: float [B, H, W, C] in [0, 1] units.
    removed: bool [B, H, W, 1] (one mask for every channel) or [B, H, W, C]
      (each channel its own mask). No image (channel) may be removed whole.

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
  out = xs.copy()
  per_chunk = max(1, CHUNK_BYTES // (8 * (w + 2) * h * w))
  for start in range(0, ms.shape[0], per_chunk):
    chunk = slice(start, start + per_chunk)
    out[chunk] = _solve_stacked(xs[chunk], ms[chunk])
  if removed.shape[-1] != 1:
    out = np.moveaxis(out.reshape(b, c, h, w), 1, -1)
  return out


def _solve_stacked(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """One band solve for the removed pixels of every image of a chunk.

  Args:
    x: float64 [N, H, W, K].
    mask: bool [N, H, W], True where removed.

  Returns:
    float64 [N, H, W, K].
  """
  n, h, w, k = x.shape
  m = mask.reshape(-1)
  flat = x.reshape(-1, k)
  out = flat.copy()
  position = np.flatnonzero(m)  # Unknowns, image-major then raster order.
  if position.size == 0:
    return out.reshape(x.shape)
  unknown = np.cumsum(m) - 1  # Unknown number of each removed position.
  image, pixel = np.divmod(position, h * w)
  row, col = np.divmod(pixel, w)
  diag = np.zeros(position.size)
  rhs = np.zeros((position.size, k))
  couplings = []
  for dy, dx, weight in degrade_lib._NEIGHBOURS:  # pylint: disable=protected-access
    nr, nc = row + dy, col + dx
    inside = (nr >= 0) & (nr < h) & (nc >= 0) & (nc < w)
    diag[inside] += weight
    eq = np.flatnonzero(inside)
    neighbour = image[eq] * (h * w) + nr[eq] * w + nc[eq]
    var = m[neighbour]
    # One neighbour per offset and equation: no repeated index here.
    rhs[eq[~var]] += weight * flat[neighbour[~var]]
    if (dy, dx) > (0, 0):  # Later in raster order: the lower triangle.
      couplings.append((eq[var], unknown[neighbour[var]], weight))
  kd = max([int((j - i).max()) for i, j, _ in couplings if i.size] + [0])
  # Lower band storage: band[i - j, j] = A[i, j] for i >= j.
  band = np.zeros((kd + 1, position.size), order="F")
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
  out[position] = solution
  return out.reshape(x.shape)
