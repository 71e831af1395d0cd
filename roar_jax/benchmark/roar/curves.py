"""The curves of the no-retrain metrics, on the device: deletion / insertion
and ROAD MoRF / LeRF of images held in memory, their areas and intervals
(definitions: `metrics.py`)."""

import functools
import math
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from roar_jax import levels as levels_lib
from roar_jax.benchmark.roar.metric_options import Options, road_fractions
from roar_jax.data import degradation as degrade_lib
from roar_jax.data import imputation as imputation_lib

# ----------------------------------------------------------------------------
# Statistics.


def auc(curves, fractions) -> np.ndarray:
  """Trapezoid area under each curve over `fractions`, divided by the last
  fraction (the curve's mean over [0, f_max]).

  Args:
    curves: [..., F] values at the fractions.
    fractions: [F] increasing, starting at 0.

  Returns:
    [...] areas.
  """
  curves = np.asarray(curves, dtype=np.float64)
  fractions = np.asarray(fractions, dtype=np.float64)
  widths = np.diff(fractions)
  area = ((curves[..., 1:] + curves[..., :-1]) * 0.5 * widths).sum(-1)
  return area / (fractions[-1] - fractions[0])


def mean_ci(values) -> tuple[float, float, float, int]:
  """Mean and 95% Student-t confidence interval over independent values.

  Returns:
    (mean, low, high, n); with n < 2 the interval is NaN (one value has no
    spread to report, never "+- 0").
  """
  v = np.asarray(values, dtype=np.float64).reshape(-1)
  n = v.size
  if n == 0:
    return math.nan, math.nan, math.nan, 0
  mean = float(v.mean())
  if n < 2:
    return mean, math.nan, math.nan, n
  half = float(scipy.stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n))
  return mean, mean - half, mean + half, n


# ----------------------------------------------------------------------------
# Image transforms on the device.


def gaussian_blur(images: jax.Array, sigma: float) -> jax.Array:
  """Separable Gaussian blur of float [B, H, W, C] (pixel units); the kernel
  (radius ceil(3 sigma)) is renormalized where it leaves the image."""
  radius = max(1, int(math.ceil(3 * sigma)))
  t = np.arange(-radius, radius + 1, dtype=np.float64)
  k = np.exp(-0.5 * (t / sigma) ** 2)
  k = jnp.asarray(k / k.sum(), images.dtype)

  def along(x, axis):
    x = jnp.moveaxis(x, axis, -1)
    shape = x.shape
    flat = x.reshape(-1, 1, shape[-1])
    out = jax.lax.conv_general_dilated(
        flat, k[None, None, :], (1,), [(radius, radius)])
    return jnp.moveaxis(out.reshape(shape), -1, axis)

  def blur(x):
    return along(along(x, -3), -2)

  ones = jnp.ones(images.shape[-3:-1] + (1,), images.dtype)
  return blur(images) / blur(ones[None])


def _normalize(images, mean, std):
  return (images / 255.0 - mean) / std


def _as_partial(fn):
  """A jit-argument form of a logits function: a `jax.tree_util.Partial`
  (its bound weights are traced arguments, not baked-in constants)."""
  if isinstance(fn, jax.tree_util.Partial):
    return fn
  return jax.tree_util.Partial(fn)


@functools.partial(jax.jit, static_argnames=("steps", "fill", "start",
                                             "blur_sigma"))
def _deletion_insertion_chunk(logits_fn, images, levels, fill_value, mean,
                              std, *, steps, fill, start, blur_sigma):
  """[b] images -> softmax probability of the explained class at every step.

  Returns:
    (deletion [b, K+1], insertion [b, K+1], target [b]).
  """
  x = images.astype(jnp.float32)
  if levels.ndim == 3:
    levels = levels[..., None]
  ks = jnp.asarray([levels_lib.threshold_level(k / steps)
                    for k in range(steps + 1)], jnp.int32)
  blurred = gaussian_blur(x, blur_sigma) if "blur" in (fill, start) else None
  if fill == "blur":
    filled = blurred
  else:
    filled = jnp.broadcast_to(fill_value.astype(jnp.float32), x.shape)
  begin = blurred if start == "blur" else filled
  top = levels[:, None].astype(jnp.int32) < ks[None, :, None, None, None]
  xs = x[:, None]
  deletion = jnp.where(top, filled[:, None], xs)
  insertion = jnp.where(top, xs, begin[:, None])
  batch = jnp.concatenate([deletion, insertion], axis=1)
  b = x.shape[0]
  logits = logits_fn(_normalize(batch.reshape((-1,) + x.shape[1:]), mean,
                                std))
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).reshape(
      b, 2, steps + 1, -1)
  target = jnp.argmax(probs[:, 0, 0], axis=-1)  # Deletion at 0% = clean.
  p = jnp.take_along_axis(probs, target[:, None, None, None], axis=-1)[..., 0]
  return p[:, 0], p[:, 1], target


@functools.partial(jax.jit, static_argnames=("ks",))
def _road_masks(levels, *, ks):
  """MoRF and LeRF removal masks [b, 2, T+1, H, W, 1|C] (step 0: none)."""
  if levels.ndim == 3:
    levels = levels[..., None]
  k = jnp.asarray(ks, jnp.int32)[None, :, None, None, None]
  lv = levels[:, None].astype(jnp.int32)
  morf = lv < k
  lerf = lv >= levels_lib.NUM_LEVELS - k
  return jnp.stack([morf, lerf], axis=1)


@jax.jit
def _road_correct(logits_fn, imputed, labels, mean, std):
  flat = imputed.reshape((-1,) + imputed.shape[-3:]).astype(jnp.float32)
  logits = logits_fn(_normalize(flat, mean, std))
  pred = jnp.argmax(logits, axis=-1).reshape(imputed.shape[:3])
  return pred == labels[:, None, None]


def _road_impute(images, removed, noise, *, solver: str, precision: str,
                 mesh: Mesh | None = None):
  """Imputes [b, 2, T+1] masked copies of each image; uint8 out."""
  b, o, t = removed.shape[:3]
  x = jnp.broadcast_to(images[:, None, None], (b, o, t) + images.shape[1:])
  nz = jnp.broadcast_to(noise[:, None, None], x.shape)
  return jnp.asarray(imputation_lib.noisy_linear(
      x, removed, nz, solver=solver, precision=precision, mesh=mesh))


# ----------------------------------------------------------------------------
# Curves of arrays held in memory.


def _mesh_of(mesh: Mesh | None) -> Mesh:
  if mesh is not None:
    return mesh
  return Mesh(np.array(jax.local_devices()), ("data",))


def _chunks(n: int, per_chunk: int) -> Iterable[slice]:
  for start in range(0, n, per_chunk):
    yield slice(start, min(n, start + per_chunk))


def _put(mesh: Mesh, size: int, *arrays):
  """Pads arrays along axis 0 to `size` rows and shards them over 'data'."""
  sharding = NamedSharding(mesh, P("data"))
  out = []
  for a in arrays:
    a = np.asarray(a)
    pad = size - a.shape[0]
    if pad:
      a = np.concatenate([a, np.repeat(a[-1:], pad, axis=0)])
    out.append(jax.device_put(a, sharding))
  return out


def _rows_per_call(options: Options, per_image: int, mesh: Mesh) -> int:
  """Images per jitted call: `batch_size` model inputs, a multiple of the
  devices."""
  devices = mesh.size
  rows = max(1, options.batch_size // per_image)
  return -(-rows // devices) * devices


def curves(logits_fn: Callable[[jax.Array], jax.Array], images, labels, levels,
           indices, *, options: Options, fill_value=None, seed: int = 0,
           mean=(0.0,), std=(1.0,), mesh: Mesh | None = None
           ) -> dict[str, np.ndarray]:
  """Every configured metric's per-image curve for images held in memory.

  Args:
    logits_fn: normalized images [N, H, W, C] -> logits [N, K] (a project
      model's `saliency.explainable(...).logits`, or any JAX function).
    images: uint8 [N, H, W, C] in the model's geometry.
    labels: int [N] true labels (ROAD).
    levels: uint8 [N, H, W] or [N, H, W, C] removal order (rank store).
    indices: int [N] the images' indices in their split (ROAD's noise).
    options: the metric options.
    fill_value: float [C] in [0, 255] (fill='channel_mean'; rounded to uint8
      as the degraded splits are); default mid-grey 128.
    seed: the run's seed (ROAD's noise, with each image's index).
    mean: `config.data.mean` ([0, 1] units).
    std: `config.data.std`.
    mesh: devices to spread the images over (default: this process's).

  Returns:
    {'deletion', 'insertion': float [N, K+1] probabilities; 'target': [N]
     the explained class; 'road_morf', 'road_lerf': float [N, T+1]
     correctness (0 / 1), step 0 the clean image} for the configured names.
  """
  mesh = _mesh_of(mesh)
  fn = _as_partial(logits_fn)
  images = np.asarray(images)
  channels = images.shape[-1]
  mean = jnp.asarray(np.broadcast_to(np.asarray(mean, np.float32),
                                     (channels,)))
  std = jnp.asarray(np.broadcast_to(np.asarray(std, np.float32), (channels,)))
  if options.fill == "black":
    value = np.zeros(channels, np.float32)
  elif fill_value is None:
    value = np.full(channels, 128.0, np.float32)
  else:
    value = degrade_lib.fill_value(fill_value, channels).astype(np.float32)
  value = jnp.asarray(value)
  out: dict[str, list[np.ndarray]] = {}
  names = set(options.names)
  if names & {"deletion", "insertion"}:
    _deletion_insertion(fn, images, levels, value, mean, std, options, mesh,
                        out)
  if names & {"road_morf", "road_lerf"}:
    _road(fn, images, labels, levels, indices, mean, std, options, seed, mesh,
          out)
  result = {k: np.concatenate(v) for k, v in out.items()}
  return {k: v for k, v in result.items()
          if k in names or k == "target"}


def _deletion_insertion(fn, images, levels, value, mean, std,
                        options: Options, mesh: Mesh, out):
  """Deletion and insertion curves, chunk by chunk, appended to `out`."""
  per = _rows_per_call(options, 2 * (options.steps + 1), mesh)
  for sl in _chunks(images.shape[0], per):
    x, lv = _put(mesh, per, images[sl], levels[sl])
    d, i, t = _deletion_insertion_chunk(
        fn, x, lv, value, mean, std, steps=options.steps, fill=options.fill,
        start=options.insertion_start, blur_sigma=float(options.blur_sigma))
    m = sl.stop - sl.start
    out.setdefault("deletion", []).append(np.asarray(d)[:m])
    out.setdefault("insertion", []).append(np.asarray(i)[:m])
    out.setdefault("target", []).append(np.asarray(t)[:m])


def _road(fn, images, labels, levels, indices, mean, std, options: Options,
          seed: int, mesh: Mesh, out):
  """ROAD's MoRF and LeRF correctness, chunk by chunk, appended to `out`."""
  ks = tuple(int(round(f * 100)) for f in road_fractions(
      options.road_thresholds))
  per = _rows_per_call(options, 2 * len(ks), mesh)
  labels, indices = np.asarray(labels), np.asarray(indices)
  for sl in _chunks(images.shape[0], per):
    noise = imputation_lib.noise(indices[sl], images.shape[1:], seed=seed,
                                 std=options.noise_std)
    x, lv, lab, nz = _put(mesh, per, images[sl], levels[sl], labels[sl],
                          noise.astype(np.float32))
    removed = _road_masks(lv, ks=ks)
    imputed = _road_impute(x, removed, nz, solver=options.imputation,
                           precision=options.precision, mesh=mesh)
    correct = np.asarray(_road_correct(fn, imputed, lab, mean, std))
    m = sl.stop - sl.start
    out.setdefault("road_morf", []).append(correct[:m, 0].astype(np.float32))
    out.setdefault("road_lerf", []).append(correct[:m, 1].astype(np.float32))


def summarize_curve(curves, fractions) -> dict:
  """Per-image curves [N, K] over `fractions` [K] -> a metric's record
  entry: 'value', 'ci95_low', 'ci95_high', 'n' (the area's mean and 95%
  interval over the images), 'fractions', 'curve' (the mean over images),
  'curve_ci95' ([low, high] per point)."""
  c = np.asarray(curves, dtype=np.float64)
  fractions = np.asarray(fractions, dtype=np.float64)
  value, low, high, n = mean_ci(auc(c, fractions))
  point_ci = [mean_ci(c[:, j])[1:3] for j in range(c.shape[1])]
  return {"value": value, "ci95_low": low, "ci95_high": high, "n": n,
          "fractions": fractions.tolist(), "curve": c.mean(0).tolist(),
          "curve_ci95": [list(p) for p in point_ci]}
