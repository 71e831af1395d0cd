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


def deletion_fractions(steps: int) -> np.ndarray:
  """The K + 1 fractions 0, 1/K, ..., 1 as whole-percent levels / 100."""
  return np.array([levels_lib.threshold_level(k / steps)
                   for k in range(steps + 1)]) / levels_lib.NUM_LEVELS


def road_fractions(thresholds: Sequence[float]) -> np.ndarray:
  """0 (the clean image) and the ROAD thresholds, in whole percents / 100."""
  return np.array([0] + [levels_lib.threshold_level(t) for t in thresholds]
                  ) / levels_lib.NUM_LEVELS


