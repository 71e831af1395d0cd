"""ROAD's noisy linear imputation for a whole batch at once.

`road_fill.noisy_linear_fill` is the reference: per image and channel group
it builds one sparse system (every removed pixel equals the weighted mean of
its 8 neighbours, 1/6 direct and 1/12 diagonal, renormalized at the border)
and solves it with `scipy.sparse.linalg.spsolve`, then adds N(0, 0.01^2) noise
(in [0, 1] pixel units, a pure function of the run seed and the image's
index) and rounds to uint8. Called once per image and threshold, the Python
around each solve costs more than the solve.

Here the same systems are solved for a batch of images (and thresholds) at
once, three ways:

- `solver='cg'`: preconditioned conjugate gradients in JAX, on the
  device. On the removed positions the system matrix A = D - W (D the
  in-image neighbour weight sum, W the 8-neighbour stencil between removed
  positions) is symmetric and, for every region that touches a kept pixel,
  positive definite, so CG with the Jacobi preconditioner D converges; every
  iteration is one 3x3 stencil over the batch, and each (image, channel)
  system keeps its own step sizes. Kept values are never written.
- `solver='banded'`: on the host, one banded Cholesky solve (LAPACK) for the
  stacked systems of many images (`host_fill.py`); the fastest on a CPU.
- `solver='scipy'`: the same stacked systems as one sparse matrix, one
  `spsolve` (`host_fill.py`).

`solver='auto'` picks 'banded' when JAX runs on the CPU and 'cg' on an
accelerator. All agree with the reference to 1e-5 before rounding
(tests/test_metrics_imputation.py).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from roar_jax.data import host_fill
from roar_jax.data import road_fill

SOLVERS = ("auto", "banded", "cg", "scipy")
PRECISIONS = ("float64", "float32")
# Relative residual (in the preconditioner's norm) at which CG stops.
CG_TOL = 1e-8


def noise(indices, shape, *, seed: int,
          std: float = road_fill.NOISY_LINEAR_STD) -> np.ndarray:
  """The reference's noise for a batch: image i's is a pure function of
  (seed, indices[i]), drawn for every value whatever the mask.

  Args:
    indices: int [B] global indices of the images in their split.
    shape: (H, W, C).
    seed: the run's seed.
    std: standard deviation in [0, 1] pixel units.

  Returns:
    float64 [B, H, W, C].
  """
  return np.stack([road_fill.noise_rng(seed, int(i)).normal(0.0, std,
                                                              size=shape)
                   for i in np.asarray(indices).reshape(-1)]) if len(
                       np.asarray(indices).reshape(-1)) else np.zeros(
                           (0,) + tuple(shape))


def _stencil(v: jax.Array) -> jax.Array:
  """sum_j w_ij v_j over the 8 neighbours j of every position i ([..., H, W,
  C]); neighbours outside the image contribute nothing."""
  h, w = v.shape[-3], v.shape[-2]
  pad = [(0, 0)] * (v.ndim - 3) + [(1, 1), (1, 1), (0, 0)]
  p = jnp.pad(v, pad)

  def at(dy, dx):
    return p[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w, :]

  direct = at(-1, 0) + at(1, 0) + at(0, -1) + at(0, 1)
  diagonal = at(-1, -1) + at(-1, 1) + at(1, -1) + at(1, 1)
  return direct * (1.0 / 6.0) + diagonal * (1.0 / 12.0)


def harmonic_fill(x, removed, *, precision: str = "float64",
                  max_iter: int = 0, tol: float = CG_TOL) -> jax.Array:
  """Replaces the removed values by the solution of ROAD's linear system (CG).

  Args:
    x: float [..., H, W, C] images in [0, 1] units (any leading axes: images,
      thresholds).
    removed: bool [..., H, W, 1] (every channel alike) or [..., H, W, C].
    precision: 'float64' agrees with the reference to ~1e-12 (x64 is enabled
      for this call only; fast on CPUs and GPUs); 'float32' (TPUs) stalls at
      the float32 attainable accuracy, ~cond(A) * 6e-8: up to ~2e-5 on 32 x
      32 images with 90% removed, still far below the uint8 step 1/255.
    max_iter: CG iterations at most; 0 = 8 (H + W) + 64.
    tol: stop once every system's residual (in the D^-1 norm) fell below
      `tol` times its right-hand side's.

  Returns:
    float like `x`'s precision: kept values exactly as given, removed ones
    solved.
  """
  if precision not in PRECISIONS:
    raise ValueError(f"precision={precision!r} must be one of {PRECISIONS}")
  if precision == "float64":
    with jax.enable_x64(True):
      return _harmonic_fill(jnp.asarray(x, jnp.float64), jnp.asarray(removed),
                            max_iter=max_iter, tol=tol)
  return _harmonic_fill(jnp.asarray(x, jnp.float32), jnp.asarray(removed),
                        max_iter=max_iter, tol=tol)


@functools.partial(jax.jit, static_argnames=("max_iter", "tol"))
def _harmonic_fill(x, removed, *, max_iter: int, tol: float):
  """`harmonic_fill` in the dtype of `x`."""
  dtype = x.dtype
  h, w = x.shape[-3], x.shape[-2]
  max_iter = max_iter or 8 * (h + w) + 64
  m = jnp.broadcast_to(removed, x.shape).astype(dtype)
  diag = _stencil(jnp.ones((h, w, 1), dtype))  # In-image weight sums.
  kept = x * (1.0 - m)
  b = m * _stencil(kept)

  def apply_a(u):
    return m * (diag * u - _stencil(m * u))

  def dot(a, c):  # Per (image, channel) system.
    return jnp.sum(a * c, axis=(-3, -2), keepdims=True)

  # Start from a push-pull fill (the kept values averaged over ever coarser
  # blocks, each hole taking the finest average that reaches it): smooth and
  # close to the solution, so CG has little low-frequency error left to
  # remove, the part it is slowest at.
  u = m * _push_pull(kept, 1.0 - m)
  r = b - apply_a(u)
  z = r / diag
  rz = dot(r, z)
  # Relative to the right-hand side (not the start): a good start stops early.
  # float32 stalls near a relative residual of 1e-6: ask no more of it.
  tol = max(tol, 1e-5) if dtype == jnp.float32 else tol
  stop = jnp.maximum((tol * tol) * dot(b, b / diag), jnp.finfo(dtype).tiny)

  def cond(state):
    i, _, _, _, rz = state
    return (i < max_iter) & jnp.any(rz > stop)

  def body(state):
    i, u, r, p, rz = state
    # A converged system (or one without removed values) stops moving.
    active = rz > stop
    ap = apply_a(p)
    pap = dot(p, ap)
    ok = active & (pap > 0)
    alpha = jnp.where(ok, rz / jnp.where(ok, pap, 1.0), 0.0)
    u = u + alpha * p
    r = r - alpha * ap
    z = r / diag
    rz_new = jnp.where(active, dot(r, z), rz)
    beta = jnp.where(active, rz_new / jnp.where(active, rz, 1.0), 0.0)
    return i + 1, u, r, jnp.where(active, z + beta * p, p), rz_new

  _, u, _, _, _ = jax.lax.while_loop(cond, body, (0, u, r, z, rz))
  return kept + m * u


def _push_pull(values, weights):
  """Fills the zero-weight positions of [..., H, W, C] by block averages.

  Args:
    values: float, zero where the weight is zero.
    weights: float in {0, 1}, broadcastable to `values`.

  Returns:
    `values / weights` where weights > 0; elsewhere the mean of the known
    values of the smallest power-of-two block around the position that holds
    any (0 when none does).
  """
  h, w = values.shape[-3], values.shape[-2]
  size = 1 << max(h - 1, w - 1, 1).bit_length()
  weights = jnp.broadcast_to(weights, values.shape)
  pad = [(0, 0)] * (values.ndim - 3) + [(0, size - h), (0, size - w), (0, 0)]
  pyramid = [(jnp.pad(values, pad), jnp.pad(weights, pad))]
  while pyramid[-1][0].shape[-3] > 1:
    v, k = pyramid[-1]
    n = v.shape[-3] // 2
    shape = v.shape[:-3] + (n, 2, n, 2, v.shape[-1])
    pyramid.append((v.reshape(shape).sum((-4, -2)),
                    k.reshape(shape).sum((-4, -2))))
  filled = None
  for v, k in reversed(pyramid):
    mean = v / jnp.where(k > 0, k, 1.0)
    if filled is not None:
      coarse = jnp.repeat(jnp.repeat(filled, 2, axis=-3), 2, axis=-2)
      mean = jnp.where(k > 0, mean, coarse)
    filled = mean
  return filled[..., :h, :w, :]


def resolve_solver(solver: str) -> str:
  """'auto' -> 'banded' on a CPU backend, 'cg' on an accelerator."""
  if solver not in SOLVERS:
    raise ValueError(f"solver={solver!r} must be one of {SOLVERS}")
  if solver != "auto":
    return solver
  return "banded" if jax.default_backend() == "cpu" else "cg"


def check_removable(removed: np.ndarray, indices=None):
  """Refuses a mask that removes every pixel of an image (or channel): the
  system is singular, as in the reference."""
  removed = np.asarray(removed, dtype=bool)
  full = removed.all(axis=(-3, -2))  # [..., 1|C]
  if full.any():
    where = np.argwhere(full)[0]
    index = (where[0] if indices is None else
             np.asarray(indices).reshape(-1)[where[0]])
    raise ValueError(
        f"fill='noisy_linear' cannot remove every pixel of image {index}: "
        "nothing is left to interpolate from (thresholds must lie in (0, 1))")


def to_uint8(values) -> jax.Array:
  """[0, 1] values -> uint8 as the reference rounds: floor(255 v + 0.5)."""
  return jnp.floor(jnp.clip(values, 0.0, 1.0) * 255.0 + 0.5).astype(jnp.uint8)


def noisy_linear(images, removed, noise_values, *, solver: str = "auto",
                 precision: str = "float64", mesh=None
                 ) -> np.ndarray | jax.Array:
  """ROAD's imputation of a batch, uint8 in, uint8 out.

  Args:
    images: uint8 [..., H, W, C] (leading axes: images, thresholds).
    removed: bool [..., H, W] / [..., H, W, 1] (pixel) or [..., H, W, C]
      (value).
    noise_values: float [..., H, W, C] in [0, 1] units (`noise`), added to
      the removed values only.
    solver: 'cg' (JAX, on the device; returns a jax.Array), 'banded' or
      'scipy' (on the host; numpy), or 'auto' (`resolve_solver`).
    precision: of 'cg' (see `harmonic_fill`).
    mesh: for 'cg', a mesh with a 'data' axis that the leading axis is
      sharded over: each device then iterates on its own systems until they
      converge, with no cross-device reduction per iteration.

  Returns:
    uint8 like `images`: kept values unchanged, removed ones imputed.
  """
  solver = resolve_solver(solver)
  if precision not in PRECISIONS:
    raise ValueError(f"precision={precision!r} must be one of {PRECISIONS}")
  if removed.ndim == images.ndim - 1:
    removed = removed[..., None]
  if solver != "cg":
    shape = np.shape(images)
    images = np.asarray(images).reshape((-1,) + shape[-3:])
    removed = np.asarray(removed, dtype=bool).reshape(
        (-1,) + np.shape(removed)[-3:])
    noise_values = np.asarray(noise_values).reshape(images.shape)
    fill = (host_fill.harmonic_fill_banded if solver == "banded" else
            host_fill.harmonic_fill_scipy)
    filled = fill(images / 255.0, removed)
    values = np.floor(np.clip(filled + noise_values, 0.0, 1.0) * 255.0 + 0.5)
    return np.where(removed, values.astype(np.uint8), images).reshape(shape)
  dtype = jnp.float64 if precision == "float64" else jnp.float32
  with jax.enable_x64(precision == "float64"):
    return _noisy_linear_fn(dtype, mesh)(
        jnp.asarray(images), jnp.asarray(removed), jnp.asarray(noise_values))


@functools.lru_cache(maxsize=None)
def _noisy_linear_fn(dtype, mesh):
  """The jitted imputation; per device (shard_map) when a mesh is given."""

  def impute(images, removed, noise_values):
    filled = _harmonic_fill(images.astype(dtype) / 255.0, removed,
                            max_iter=0, tol=CG_TOL)
    return jnp.where(removed, to_uint8(filled + noise_values.astype(dtype)),
                     images)

  if mesh is None:
    return jax.jit(impute)
  spec = jax.sharding.PartitionSpec("data")
  return jax.jit(jax.shard_map(impute, mesh=mesh, in_specs=spec,
                               out_specs=spec, check_vma=False))
