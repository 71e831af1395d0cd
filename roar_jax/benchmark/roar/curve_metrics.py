"""Deletion, insertion and ROAD's MoRF / LeRF as registered metrics.

The four curves of `curves.py` (docs/design.md, "No-retrain metrics"): each
batch is scored once for every configured curve (`curves.curves`, shared
through the Batch's cache, so deletion and insertion cost one pass), and
each metric takes its own series. A metric's record entry is its area under
the mean curve with a 95% interval over the images, the mean curve and the
interval at each point; metrics.csv names it `<name>_auc`.
"""

from typing import Mapping

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
      summarize=lambda values, options: curves_lib.summarize_curve(
          values[name], _fractions(name, options)))(per_image)


for _name in TITLES:
  _register(_name)
