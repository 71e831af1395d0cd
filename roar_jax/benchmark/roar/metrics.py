"""No-retrain metrics: deletion / insertion curves and ROAD's MoRF / LeRF.

Every metric reads the removal order of the rank store (level 0 = the most
important 1% of positions) and the base model; nothing is retrained.

- Deletion (Petsiuk et al. 2018): at fraction f = k/K, k = 0..K, the top-f
  positions are replaced by the fill (`metrics.fill`: the grid's channel mean,
  rounded to uint8 as the degraded splits are, 'black', or a Gaussian blur of
  the image); the curve is the softmax probability of the explained class,
  the class the model predicts on the clean image.
- Insertion: starts from the fully filled image (`metrics.insertion_start`
  'fill'), or from the blurred image ('blur', RISE's choice), and restores
  the top-f positions.
  Deletion at 0% and insertion at 100% are the clean image.
- ROAD (Rong et al. 2022): MoRF removes the top fraction t, LeRF the bottom
  fraction t (so LeRF at t keeps the top 1 - t), t in `metrics.road_thresholds`
  (default 10%, ..., 90%), filled by noisy linear imputation (the grid's
  'noisy_linear' fill, solved for the whole batch at once,
  `data/imputation.py`); the curve is the base model's accuracy on the true
  labels. The clean image is the curve's point at 0.

AUC: the trapezoid rule over the fractions, divided by the largest fraction
(1 for deletion / insertion, 0.9 for ROAD by default), i.e. the curve's mean
over [0, f_max]; computed per image, then averaged. Lower is better for
deletion and MoRF, higher for insertion and LeRF. Each value comes with a 95%
Student-t confidence interval over the images (DESIGN.md, "Statistics").

Work is batched over images and curve steps in one jitted call per chunk
(`metrics.batch_size` model inputs at most), so memory stays flat whatever
the number of images. Each estimator's record (`W/metrics/<estimator>.json`)
carries its provenance (inputs: the base model and the estimator's rank
store; fields: the metric options) and is reused while its fingerprint
matches.
"""

import dataclasses
import functools
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
import tensorflow as tf
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from roar_jax import levels as levels_lib
from roar_jax import provenance as provenance_lib
from roar_jax import workdir as workdir_lib
from roar_jax.data import degradation as degrade_lib
from roar_jax.data import imputation as imputation_lib

METRICS = ("deletion", "insertion", "road_morf", "road_lerf")
# Whether a low area is good: deletion and MoRF fall fast for a good ranking.
LOWER_IS_BETTER = {"deletion": True, "insertion": False, "road_morf": True,
                   "road_lerf": False}
FILLS = ("channel_mean", "black", "blur")
INSERTION_STARTS = ("fill", "blur")
CSV_COLUMNS = ("estimator", "metric", "value", "ci95_low", "ci95_high", "n")
METRICS_DIR = "metrics"


def auc_name(metric: str) -> str:
  """'deletion' -> 'deletion_auc' (the metric's name in metrics.csv)."""
  return f"{metric}_auc"


# ----------------------------------------------------------------------------
# Options.


@dataclasses.dataclass(frozen=True)
class Options:
  """`config.metrics`, checked (see `defaults.base_config`)."""
  names: tuple[str, ...] = METRICS
  steps: int = 20
  fill: str = "channel_mean"
  insertion_start: str = "fill"
  blur_sigma: float = 5.0
  road_thresholds: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7,
                                        0.8, 0.9)
  noise_std: float = degrade_lib.NOISY_LINEAR_STD
  num_images: int = 0
  batch_size: int = 512
  imputation: str = "cg"
  precision: str = "float64"

  def __post_init__(self):
    check(self)

  @classmethod
  def from_config(cls, config) -> "Options":
    """The options of `config.metrics` (defaults for absent fields)."""
    mc = config.get("metrics") or {}
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in dict(mc).items():
      if key in known:
        kwargs[key] = tuple(value) if isinstance(value, (list, tuple)) else (
            value)
    return cls(**kwargs)

  def fields(self) -> dict[str, Any]:
    """The options that change a metric's value (provenance fields)."""
    out = {f"metrics.{k}": (list(v) if isinstance(v, tuple) else v)
           for k, v in dataclasses.asdict(self).items()
           if k not in ("batch_size", "names")}
    return out


def _fail(field: str, message: str):
  raise ValueError(f"config.metrics.{field}{message}")


def check(o: Options):
  """Raises ValueError naming `config.metrics.<field>` for a bad option."""
  names = tuple(o.names)
  for n in names:
    if n not in METRICS:
      _fail("names", f": unknown metric {n!r}; known: {list(METRICS)}")
  if not names:
    _fail("names", " is empty: name at least one of " + str(list(METRICS)))
  if len(set(names)) != len(names):
    _fail("names", f"={list(names)} names a metric more than once")
  if not isinstance(o.steps, (int, np.integer)) or isinstance(
      o.steps, bool) or not 1 <= o.steps <= levels_lib.NUM_LEVELS:
    _fail("steps", f"={o.steps!r} must be an integer in [1, "
          f"{levels_lib.NUM_LEVELS}] (the rank store has "
          f"{levels_lib.NUM_LEVELS} levels)")
  if o.fill not in FILLS:
    _fail("fill", f"={o.fill!r}: expected one of {list(FILLS)}")
  if o.insertion_start not in INSERTION_STARTS:
    _fail("insertion_start", f"={o.insertion_start!r}: expected one of "
          f"{list(INSERTION_STARTS)}")
  if not isinstance(o.blur_sigma, (int, float)) or not o.blur_sigma > 0:
    _fail("blur_sigma", f"={o.blur_sigma!r} must be > 0 (pixels)")
  if not o.road_thresholds:
    _fail("road_thresholds", " is empty")
  seen = set()
  for t in o.road_thresholds:
    if not isinstance(t, (int, float)) or not 0.0 < t < 1.0:
      _fail("road_thresholds", f": {t!r} is outside (0, 1) (ROAD removes a "
            "fraction of the pixels, never none or all)")
    percent = levels_lib.threshold_level(t)
    if percent in seen or percent in (0, levels_lib.NUM_LEVELS):
      _fail("road_thresholds", f": {t!r} repeats a threshold or rounds to "
            f"{percent}% (thresholds are whole percents in 1..99)")
    seen.add(percent)
  if not isinstance(o.noise_std, (int, float)) or not o.noise_std >= 0:
    _fail("noise_std", f"={o.noise_std!r} must be >= 0 ([0, 1] pixel units)")
  if not isinstance(o.num_images, (int, np.integer)) or o.num_images < 0:
    _fail("num_images", f"={o.num_images!r} must be an integer >= 0 (0: the "
          "whole test split)")
  if not isinstance(o.batch_size, (int, np.integer)) or o.batch_size < 1:
    _fail("batch_size", f"={o.batch_size!r} must be a positive integer")
  if o.imputation not in imputation_lib.SOLVERS:
    _fail("imputation", f"={o.imputation!r}: expected one of "
          f"{list(imputation_lib.SOLVERS)}")
  if o.precision not in imputation_lib.PRECISIONS:
    _fail("precision", f"={o.precision!r}: expected one of "
          f"{list(imputation_lib.PRECISIONS)}")


def deletion_fractions(steps: int) -> np.ndarray:
  """The K + 1 fractions 0, 1/K, ..., 1 as whole-percent levels / 100."""
  return np.array([levels_lib.threshold_level(k / steps)
                   for k in range(steps + 1)]) / levels_lib.NUM_LEVELS


def road_fractions(thresholds: Sequence[float]) -> np.ndarray:
  """0 (the clean image) and the ROAD thresholds, in whole percents / 100."""
  return np.array([0] + [levels_lib.threshold_level(t) for t in thresholds]
                  ) / levels_lib.NUM_LEVELS


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
  b = imputed.shape[0]
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
  if solver == "scipy":
    x, removed, nz = np.asarray(x), np.asarray(removed), np.asarray(nz)
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
  n, channels = images.shape[0], images.shape[-1]
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
    per = _rows_per_call(options, 2 * (options.steps + 1), mesh)
    for sl in _chunks(n, per):
      x, lv = _put(mesh, per, images[sl], levels[sl])
      d, i, t = _deletion_insertion_chunk(
          fn, x, lv, value, mean, std, steps=options.steps, fill=options.fill,
          start=options.insertion_start, blur_sigma=float(options.blur_sigma))
      m = sl.stop - sl.start
      out.setdefault("deletion", []).append(np.asarray(d)[:m])
      out.setdefault("insertion", []).append(np.asarray(i)[:m])
      out.setdefault("target", []).append(np.asarray(t)[:m])
  if names & {"road_morf", "road_lerf"}:
    ks = tuple(int(round(f * 100)) for f in road_fractions(
        options.road_thresholds))
    per = _rows_per_call(options, 2 * len(ks), mesh)
    labels = np.asarray(labels)
    indices = np.asarray(indices)
    for sl in _chunks(n, per):
      noise = imputation_lib.noise(indices[sl], images.shape[1:], seed=seed,
                                   std=options.noise_std)
      x, lv, lab, nz = _put(mesh, per, images[sl], levels[sl], labels[sl],
                            noise.astype(np.float32))
      removed = _road_masks(lv, ks=ks)
      imputed = _road_impute(x, removed, nz, solver=options.imputation,
                             precision=options.precision, mesh=mesh)
      correct = np.asarray(_road_correct(fn, imputed, lab, mean, std))
      m = sl.stop - sl.start
      out.setdefault("road_morf", []).append(correct[:m, 0].astype(
          np.float32))
      out.setdefault("road_lerf", []).append(correct[:m, 1].astype(
          np.float32))
  result = {k: np.concatenate(v) for k, v in out.items()}
  return {k: v for k, v in result.items()
          if k in names or k == "target"}


def summarize(per_image: Mapping[str, np.ndarray], options: Options
              ) -> dict[str, Any]:
  """Per-image curves -> {metric: {'value', 'ci95_low', 'ci95_high', 'n',
  'fractions', 'curve' (mean over images), 'curve_ci95' ([low, high] per
  point)}}."""
  out = {}
  for name in options.names:
    c = np.asarray(per_image[name], dtype=np.float64)
    fractions = (deletion_fractions(options.steps)
                 if name in ("deletion", "insertion")
                 else road_fractions(options.road_thresholds))
    value, low, high, n = mean_ci(auc(c, fractions))
    point_ci = [mean_ci(c[:, j])[1:3] for j in range(c.shape[1])]
    out[name] = {"value": value, "ci95_low": low, "ci95_high": high, "n": n,
                 "fractions": fractions.tolist(),
                 "curve": c.mean(0).tolist(),
                 "curve_ci95": [list(p) for p in point_ci]}
  return out


# ----------------------------------------------------------------------------
# The stage: images from the test split, rankings from the rank store.


def record_path(wd: workdir_lib.Workdir, estimator: str) -> str:
  return wd.sub(METRICS_DIR, f"{estimator}.json")


def plan_artifacts(config, plan) -> dict[str, provenance_lib.Artifact]:
  """The metric record of every estimator, with its provenance.

  Fields: the metric options, the seed (ROAD's noise), the fill of deletion
  and insertion (the grid's pinned fill value); inputs: the base model, the
  estimator's rank store and, when the fill is the computed channel mean, its
  artifact. Pass them to `provenance.settle` with the plan's artifacts.
  """
  options = Options.from_config(config)
  fields = {**options.fields(), "seed": config.seed,
            "roar.fill_value": list(config.roar.fill_value)}
  inputs = {"base": plan.base.fingerprint}
  if options.fill == "channel_mean" and plan.channel_mean is not None:
    inputs["channel_mean"] = plan.channel_mean.fingerprint
  return {est: provenance_lib.Artifact(
      "metric record", record_path(plan.workdir, est),
      provenance_lib.provenance(fields, {**inputs,
                                         "ranks": plan.ranks[est].fingerprint}))
          for est in config.explain.estimators}


def matching(artifact: provenance_lib.Artifact) -> dict[str, Any] | None:
  """The artifact's JSON record if it is stored under its fingerprint."""
  record = workdir_lib.read_json(artifact.path, missing_ok=True)
  if record and record.get("fingerprint") == artifact.fingerprint:
    return record
  return None


def _test_batches(config, source, options: Options, rows: int):
  """This process's test images (eval geometry, uint8) in batches of
  `rows`: {'image', 'label', 'index'}."""
  from roar_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  ds = source.load("test", process_index=jax.process_index(),
                   process_count=jax.process_count())
  if options.num_images:
    limit = tf.constant(options.num_images, tf.int64)
    ds = ds.filter(lambda ex: tf.cast(ex["index"], tf.int64) < limit)
  ds = ds.map(tf.autograph.experimental.do_not_convert(
      lambda ex: {"image": preprocess.eval_geometry(ex["image"], config.data),
                  "label": tf.cast(ex["label"], tf.int32),
                  "index": tf.cast(ex["index"], tf.int64)}),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(rows).prefetch(2).as_numpy_iterator()


def _fill_value(config, options: Options, source, channel_mean):
  """The 'channel_mean' fill: the grid's (stored or pinned), else computed
  from the training split here."""
  if options.fill != "channel_mean":
    return None
  if channel_mean is not None:
    return np.asarray(channel_mean, np.float64)
  if config.roar.get("fill_value"):
    return np.asarray(config.roar.fill_value, np.float64)
  return degrade_lib.channel_mean(source)


def _gather(values: np.ndarray) -> np.ndarray:
  """Every process's rows (one process: the rows themselves)."""
  if jax.process_count() == 1:
    return values
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  counts = multihost_utils.process_allgather(np.array([len(values)]))
  most = int(np.max(counts))
  padded = np.zeros((most,) + values.shape[1:], values.dtype)
  padded[:len(values)] = values
  every = multihost_utils.process_allgather(padded)
  return np.concatenate([every[p][:int(c)] for p, c in
                         enumerate(np.asarray(counts).reshape(-1))])


def compute(config, plan, source, channel_mean=None, *, logits_fn=None
            ) -> dict[str, dict[str, Any]]:
  """Computes every estimator's metrics whose record does not match yet.

  Reads the test split once for all estimators, in chunks (`metrics.
  batch_size` model inputs per jitted call), and writes
  `W/metrics/<estimator>.json` per estimator.

  Args:
    config: the experiment config (`config.metrics`, `config.explain`).
    plan: the grid's artifacts (`grid.plan_of`); the base model and the rank
      store must be complete.
    source: the undegraded dataset.
    channel_mean: the grid's fill (`grid.channel_mean`); None: computed here
      from the training split when `metrics.fill='channel_mean'`.
    logits_fn: the model to score (default: the base model of the plan).

  Returns:
    {estimator: record}.
  """
  from roar_jax.data import rank_store as rank_store_lib  # pylint: disable=g-import-not-at-top
  options = Options.from_config(config)
  artifacts = plan_artifacts(config, plan)
  records = {est: matching(a) for est, a in artifacts.items()}
  todo = [est for est, r in records.items() if r is None]
  if not todo:
    return records
  if logits_fn is None:
    from roar_jax import saliency  # pylint: disable=g-import-not-at-top
    from roar_jax import training  # pylint: disable=g-import-not-at-top
    module, variables = training.load_model(config, plan.base.path,
                                            source=source)
    logits_fn = saliency.explainable(module, variables).logits
  fill = _fill_value(config, options, source, channel_mean)
  store = rank_store_lib.RankStore(plan.workdir.root)
  per_image: dict[str, dict[str, list[np.ndarray]]] = {e: {} for e in todo}
  import time  # pylint: disable=g-import-not-at-top
  start = time.time()
  count = 0
  for batch in _test_batches(config, source, options, rows=1024):
    for est in todo:
      levels = store.lookup(est, "test", batch["index"])
      c = curves(logits_fn, batch["image"], batch["label"], levels,
                 batch["index"], options=options, fill_value=fill,
                 seed=config.seed, mean=config.data.mean, std=config.data.std)
      for k, v in c.items():
        per_image[est].setdefault(k, []).append(v)
    count += len(batch["index"])
  elapsed = time.time() - start
  logging.info("metrics: %d test images x %d estimators in %.1f s", count,
               len(todo), elapsed)
  for est in todo:
    merged = {k: _gather(np.concatenate(v)) for k, v in per_image[est].items()}
    record = {"estimator": est, "metrics": summarize(merged, options),
              "num_images": int(len(merged["target"]) if "target" in merged
                                else len(next(iter(merged.values())))),
              "wall_time_s": elapsed / len(todo),
              "fingerprint": artifacts[est].fingerprint,
              "provenance": dict(artifacts[est].record)}
    if jax.process_index() == 0:
      workdir_lib.write_json(artifacts[est].path, record)
    records[est] = record
  return records


# ----------------------------------------------------------------------------
# The report.


def rows_of(records: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
  """metrics.csv rows: estimator, metric (`<name>_auc`), value, CI, n."""
  rows = []
  for est in records:
    for name, m in records[est]["metrics"].items():
      rows.append({"estimator": est, "metric": auc_name(name),
                   "value": m["value"], "ci95_low": m["ci95_low"],
                   "ci95_high": m["ci95_high"], "n": m["n"]})
  return rows


_TITLES = {
    "deletion": "Deletion: top fraction replaced by the fill",
    "insertion": "Insertion: top fraction restored",
    "road_morf": "ROAD MoRF: top fraction imputed",
    "road_lerf": "ROAD LeRF: bottom fraction imputed",
}
_YLABELS = {"deletion": "p(explained class)", "insertion":
            "p(explained class)", "road_morf": "accuracy",
            "road_lerf": "accuracy"}


def plot(records: Mapping[str, Mapping[str, Any]], path: str):
  """One panel per metric, a line per estimator (`random` black dashed)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  names = [n for n in METRICS
           if any(n in r["metrics"] for r in records.values())]
  fig, axes = plt.subplots(1, max(1, len(names)),
                           figsize=(4.2 * max(1, len(names)), 3.6),
                           squeeze=False)
  for ax, name in zip(axes[0], names):
    for est, r in sorted(records.items()):
      m = r["metrics"].get(name)
      if m is None:
        continue
      style = ({"color": "black", "linestyle": "--"} if est == "random"
               else {})
      ax.plot(m["fractions"], m["curve"], marker=".", label=(
          f"{est} ({m['value']:.3f})"), **style)
    ax.set_title(_TITLES[name], fontsize=9)
    ax.set_xlabel("fraction of positions")
    ax.set_ylabel(_YLABELS[name])
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title="AUC", title_fontsize=7)
  fig.tight_layout()
  workdir_lib.save_figure(fig, path, dpi=110)
  plt.close(fig)


def _fmt(v):
  return f"{v:.6g}" if isinstance(v, float) else v


def write_report(wd: workdir_lib.Workdir,
                 records: Mapping[str, Mapping[str, Any]]):
  """W/report/metrics.csv and W/report/metrics.png."""
  rows = rows_of(records)
  workdir_lib.write_csv(wd.report("metrics.csv"),
                        [{k: _fmt(v) for k, v in r.items()} for r in rows],
                        CSV_COLUMNS)
  if records:
    plot(records, wd.report("metrics.png"))
  return rows


def run(config, plan, source, channel_mean=None, *,
        results_rows: Sequence[Mapping[str, Any]] | None = None,
        logits_fn=None) -> dict[str, Any]:
  """The metrics stage: curves, the leakage probe, agreement, the report.

  Call it after the rank store and the channel mean exist (in `--mode=roar`
  before the retrain units: it costs little next to them).

  Args:
    config: the experiment config.
    plan: the grid's artifacts.
    source: the undegraded dataset.
    channel_mean: `grid.channel_mean(config, plan, source)`.
    results_rows: the ROAR/KAR rows of results.csv, if any, for agreement.
    logits_fn: the model to score (default: the plan's base model).

  Returns:
    {'metrics': metrics.csv rows, 'leakage': leakage.csv rows,
     'agreement': agreement.csv rows}.
  """
  from roar_jax.benchmark.roar import agreement  # pylint: disable=g-import-not-at-top
  from roar_jax.benchmark.roar import leakage  # pylint: disable=g-import-not-at-top
  records = compute(config, plan, source, channel_mean, logits_fn=logits_fn)
  leak = []
  if config.get("metrics") is None or config.metrics.get("leakage", True):
    leak = leakage.run(config, plan, source)
  if jax.process_index() != 0:
    return {"metrics": [], "leakage": leak, "agreement": []}
  rows = write_report(plan.workdir, records)
  agree = agreement.write(plan.workdir, rows, results_rows)
  return {"metrics": rows, "leakage": leak, "agreement": agree}


def report(config, plan, *, results_rows=None) -> dict[str, Any] | None:
  """`--mode=report`: metrics.csv, the figure and agreement.csv from the
  stored records that match the config (None when there are none)."""
  from roar_jax.benchmark.roar import agreement  # pylint: disable=g-import-not-at-top
  records = {est: r for est, a in plan_artifacts(config, plan).items()
             if (r := matching(a)) is not None}
  if not records:
    return None
  rows = write_report(plan.workdir, records)
  return {"metrics": rows,
          "agreement": agreement.write(plan.workdir, rows, results_rows)}


def rank_maps(maps, *, key: jax.Array, granularity: str = "pixel",
              transform: str = "abs") -> jax.Array:
  """Removal-order levels of maps given directly, ties broken at random.

  The rank store breaks ties by position (deterministic rankings); a metric
  fed maps by hand (a notebook, the bench) should not read a tie as an
  order, so here equal scores fall in a random order (ROAD adds a tiny random
  tie-breaker for the same reason): a constant map is a random ranking.

  Args:
    maps: [B, H, W, C] saliency maps.
    key: a PRNG key for the tie-breaker.
    granularity: 'pixel' or 'value' (as `saliency.rank`).
    transform: 'abs', 'square' or 'signed'.

  Returns:
    uint8 levels [B, H, W] or [B, H, W, C].
  """
  from roar_jax.saliency import ranking  # pylint: disable=g-import-not-at-top
  s = ranking.scores(jnp.asarray(maps), granularity, transform)
  flat = s.reshape(s.shape[0], -1)
  tie = jax.random.uniform(key, flat.shape)

  def row(score, r):
    order = jnp.lexsort((r, -score))  # Score descending, then at random.
    n = score.shape[0]
    ranks = jnp.zeros((n,), jnp.int32).at[order].set(
        jnp.arange(n, dtype=jnp.int32))
    return (ranks * levels_lib.NUM_LEVELS) // n

  return jax.vmap(row)(flat, tie).astype(jnp.uint8).reshape(s.shape)
