"""Options of the no-retrain metrics: names, steps, fills, ROAD thresholds,
and their checks (`config.metrics`; `metrics.py` computes them)."""

import dataclasses
from typing import Any, Sequence

import numpy as np

from roar_jax import levels as levels_lib
from roar_jax.data import imputation as imputation_lib
from roar_jax.data import road_fill

# The default `config.metrics.names`: the curve metrics (curve_metrics.py);
# the registry (metric_registry.py) knows every metric and its direction.
METRICS = ("deletion", "insertion", "road_morf", "road_lerf")
FILLS = ("channel_mean", "black", "blur")
INSERTION_STARTS = ("fill", "blur")
# Faithfulness correlation's replacement values (Quantus's names).
FAITHFULNESS_BASELINES = ("black", "mean")
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
  noise_std: float = road_fill.NOISY_LINEAR_STD
  num_images: int = 0
  batch_size: int = 512
  imputation: str = "auto"
  precision: str = "float64"
  # Infidelity (infidelity.py): Captum's n_perturb_samples; the Gaussian
  # perturbation's std in the model's input units; Captum's `normalize`.
  infidelity_samples: int = 10
  infidelity_noise_std: float = 0.2
  infidelity_normalize: bool = False
  # Sensitivity-max / -avg (sensitivity.py): Captum's n_perturb_samples and
  # perturb_radius (uniform noise, the model's input units).
  sensitivity_samples: int = 10
  sensitivity_radius: float = 0.02
  # Faithfulness correlation (faithfulness.py): Quantus's nr_runs,
  # subset_size (0: the image's side, as 224 is of Quantus's 224 x 224
  # inputs) and perturb_baseline ('black': the image's minimum; 'mean').
  faithfulness_runs: int = 100
  faithfulness_subset: int = 0
  faithfulness_baseline: str = "black"

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
    """The options that change a metric's value (provenance fields); those
    of a metric that is not configured are left out, so adding a metric
    keeps the records of runs that do not compute it."""
    out = {f"metrics.{k}": (list(v) if isinstance(v, tuple) else v)
           for k, v in dataclasses.asdict(self).items()
           if k not in ("batch_size", "names") and _configured(self, k)}
    if _configured(self, "faithfulness_runs"):
      # How the subsets are drawn: Floyd's algorithm replaced a top-k of
      # uniforms (same distribution, other subsets), so a record drawn the
      # old way, which lacks this field, reads as stale, not as current.
      out["metrics.faithfulness_subset_draw"] = "floyd"
    return out


# The options read by one family of metrics only: option prefix -> the
# metric names that read them.
_OWN_FIELDS = {
    "infidelity_": ("infidelity",),
    "sensitivity_": ("sensitivity_max", "sensitivity_avg"),
    "faithfulness_": ("faithfulness_correlation",),
}


def _configured(o: Options, field: str) -> bool:
  """Whether `field` is read by a configured metric (always, for the
  options every metric may read)."""
  for prefix, metrics in _OWN_FIELDS.items():
    if field.startswith(prefix):
      return any(n in o.names for n in metrics)
  return True


def _fail(field: str, message: str):
  raise ValueError(f"config.metrics.{field}{message}")


def check(o: Options):
  """Raises ValueError naming `config.metrics.<field>` for a bad option."""
  # The names are checked against the metric registry
  # (`metric_plugins.check`), which this module cannot import.
  if isinstance(o.names, str):
    _fail("names", f"={o.names!r} must be a tuple of metric names")
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
  _check_perturbation_options(o)


def _positive_int(o: Options, field: str, minimum: int = 1):
  v = getattr(o, field)
  if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or (
      v < minimum):
    _fail(field, f"={v!r} must be an integer >= {minimum}")


def _check_perturbation_options(o: Options):
  """The options of infidelity, sensitivity and faithfulness correlation,
  and SRG's channel-mean fill."""
  _positive_int(o, "infidelity_samples")
  _positive_int(o, "sensitivity_samples")
  _positive_int(o, "faithfulness_runs", 2)  # A correlation needs 2 runs.
  _positive_int(o, "faithfulness_subset", 0)
  for field in ("infidelity_noise_std", "sensitivity_radius"):
    v = getattr(o, field)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
      _fail(field, f"={v!r} must be > 0 (the model's input units)")
  if not isinstance(o.infidelity_normalize, bool):
    _fail("infidelity_normalize", f"={o.infidelity_normalize!r} must be "
          "True or False")
  if o.faithfulness_baseline not in FAITHFULNESS_BASELINES:
    _fail("faithfulness_baseline", f"={o.faithfulness_baseline!r}: "
          f"expected one of {list(FAITHFULNESS_BASELINES)}")
  if "srg_channel_mean" in o.names and o.fill != "channel_mean":
    # The stage computes the channel mean only for metrics.fill =
    # 'channel_mean' (`metric_inputs.fill_value`).
    _fail("names", f": 'srg_channel_mean' needs metrics.fill="
          f"'channel_mean' (it is {o.fill!r}); use srg_black or srg_blur")


def deletion_fractions(steps: int) -> np.ndarray:
  """The K + 1 fractions 0, 1/K, ..., 1 as whole-percent levels / 100."""
  return np.array([levels_lib.threshold_level(k / steps)
                   for k in range(steps + 1)]) / levels_lib.NUM_LEVELS


def road_fractions(thresholds: Sequence[float]) -> np.ndarray:
  """0 (the clean image) and the ROAD thresholds, in whole percents / 100."""
  return np.array([0] + [levels_lib.threshold_level(t) for t in thresholds]
                  ) / levels_lib.NUM_LEVELS


