"""Deletion, insertion and ROAD's MoRF / LeRF as registered metrics.

The four curves of `curves.py` (docs/design.md, "No-retrain metrics"): each
batch is scored once for every configured curve (`curves.curves`, shared
through the Batch's cache, so deletion and insertion cost one pass), and
each metric takes its own series. A metric's record entry is its area under
the mean curve with a 95% interval over the images, the mean curve and the
interval at each point; metrics.csv names it `<name>_auc`.
"""

from typing import Any, Mapping

import numpy as np

from roar_jax.benchmark.roar import curves as curves_lib
from roar_jax.benchmark.roar import metric_registry
from roar_jax.benchmark.roar.metric_options import (
    auc_name, deletion_fractions, road_fractions)

TITLES = {
    "deletion": "Deletion: top fraction replaced by the fill",
    "insertion": "Insertion: top fraction restored",
    "road_morf": "ROAD MoRF: top fraction imputed",
    "road_lerf": "ROAD LeRF: bottom fraction imputed",
}
_LOWER_IS_BETTER = {"deletion": True, "insertion": False, "road_morf": True,
                    "road_lerf": False}


def _fractions(name: str, options) -> np.ndarray:
  return (deletion_fractions(options.steps) if name in ("deletion",
                                                        "insertion")
          else road_fractions(options.road_thresholds))


def _batch_curves(batch: metric_registry.Batch) -> dict[str, np.ndarray]:
  """Every configured curve of the batch, computed once."""
  return batch.cached("curves", lambda: curves_lib.curves(
      batch.logits, batch.images, batch.labels, batch.levels, batch.indices,
      options=batch.options, fill_value=batch.fill_value, seed=batch.seed,
      mean=batch.mean, std=batch.std))


def summarize_curve(name: str, curves: np.ndarray, options
                    ) -> dict[str, Any]:
  """Per-image curves [N, K] -> the record entry: 'value', 'ci95_low',
  'ci95_high', 'n' (the area's mean and 95% interval over the images),
  'fractions', 'curve' (the mean over images), 'curve_ci95' ([low, high] per
  point)."""
  c = np.asarray(curves, dtype=np.float64)
  fractions = _fractions(name, options)
  value, low, high, n = curves_lib.mean_ci(curves_lib.auc(c, fractions))
  point_ci = [curves_lib.mean_ci(c[:, j])[1:3] for j in range(c.shape[1])]
  return {"value": value, "ci95_low": low, "ci95_high": high, "n": n,
          "fractions": fractions.tolist(), "curve": c.mean(0).tolist(),
          "curve_ci95": [list(p) for p in point_ci]}


def _register(name: str):
  """Registers the curve `name` (its series, widths and summary)."""
  with_target = name in ("deletion", "insertion")

  def per_image(batch):
    out = _batch_curves(batch)
    return {k: out[k] for k in (name, "target") if k in out and (
        k == name or with_target)}

  def widths(options) -> Mapping[str, tuple]:
    shape = (len(_fractions(name, options)),)
    return {name: shape, "target": ()} if with_target else {name: shape}

  metric_registry.register(
      name, needs=("ranks",), lower_is_better=_LOWER_IS_BETTER[name],
      widths=widths, column=auc_name(name), title=TITLES[name],
      summarize=lambda values, options: summarize_curve(
          name, values[name], options))(per_image)


for _name in TITLES:
  _register(_name)
