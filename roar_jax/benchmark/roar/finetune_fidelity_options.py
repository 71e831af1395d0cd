"""Options of fine-tune-once fidelity (`config.finetune`), their checks, and
the metrics.csv columns of its scores (`finetune_fidelity.py` runs it).

A light module (config validation imports it): it declares the `ff_`
prefix to the metric registry, so the agreement table and the report's
headings orient an `ff_` column as the metric it prefixes.
"""

import dataclasses
import math
from typing import Any

import numpy as np

from roar_jax.benchmark.roar import metric_registry

# metrics.csv names a score `ff_<the metric's column>`: 'ff_deletion_auc'.
PREFIX = "ff_"
metric_registry.register_prefix(PREFIX)
FINETUNE_DIR = "finetune_fidelity"
# The fills the fine-tune can draw as the metric draws them (a blurred
# image would need the blur inside the input pipeline).
FILLS = ("channel_mean", "black")


def column(metric_column: str) -> str:
  """'deletion_auc' -> 'ff_deletion_auc'."""
  return PREFIX + metric_column


def enabled(config) -> bool:
  """Whether the metrics stage runs the protocol (`finetune.enabled`)."""
  section = config.get("finetune")
  return bool(section is not None and section.get("enabled", False))


def switched_on(config):
  """A copy of `config` with `finetune.enabled` set (`--mode=
  finetune_fidelity` is the metrics stage with the switch on)."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.finetune.enabled = True
  return c


@dataclasses.dataclass(frozen=True)
class Options:
  """`config.finetune`, checked; see `defaults._finetune_defaults`."""
  steps: int
  learning_rate_scale: float
  fraction_range: tuple[float, float]
  draws: int
  seed: int
  metrics: tuple[str, ...]

  @classmethod
  def from_config(cls, config) -> "Options":
    """The options of `config.finetune`, `steps` resolved (0: a quarter of
    `train.num_steps`); `draws` stays as configured (0: `draws_for`).

    Raises:
      ValueError: naming `config.finetune.<field>`, for a bad value.
    """
    f = config.finetune
    check(config)
    steps = int(f.steps) or max(1, int(config.train.num_steps) // 4)
    return cls(steps, float(f.learning_rate_scale),
               tuple(float(v) for v in f.fraction_range), int(f.draws),
               int(f.seed), tuple(f.metrics))

  def draws_for(self, batch_size: int, num_train: int) -> int:
    """The copies of the training split: as configured, or (0) as many as
    the fine-tune has images to see, so no step shows a mask twice."""
    return self.draws or max(1, math.ceil(self.steps * int(batch_size)
                                          / max(int(num_train), 1)))

  def fields(self) -> dict[str, Any]:
    """The provenance fields of the fine-tuned model (draws 0: resolved
    from the training split's size, which the base model's fingerprint
    holds)."""
    return {"finetune.steps": self.steps,
            "finetune.learning_rate_scale": self.learning_rate_scale,
            "finetune.fraction_range": list(self.fraction_range),
            "finetune.draws": self.draws, "finetune.seed": self.seed}


def _fail(field: str, message: str):
  raise ValueError(f"config.finetune.{field}{message}")


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def check(config) -> None:
  """Raises ValueError naming `config.finetune.<field>` for a bad option
  (one line)."""
  f = config.finetune
  if not isinstance(f.enabled, bool):
    _fail("enabled", f"={f.enabled!r} must be True or False")
  if not _is_int(f.steps) or f.steps < 0:
    _fail("steps", f"={f.steps!r} must be an integer >= 0 (0: "
          "train.num_steps // 4)")
  scale = f.learning_rate_scale
  if not isinstance(scale, (int, float)) or isinstance(scale, bool) or (
      not 0 < scale <= 10):
    _fail("learning_rate_scale", f"={scale!r} must be a number in (0, 10] "
          "(times train.learning_rate)")
  r = tuple(f.fraction_range)
  if len(r) != 2 or not all(isinstance(v, (int, float)) for v in r) or (
      not 0.0 <= r[0] <= r[1] <= 1.0):
    _fail("fraction_range", f"={r!r} must be (low, high) with 0 <= low <= "
          "high <= 1 (the fractions of the image masked)")
  if not _is_int(f.draws) or f.draws < 0:
    _fail("draws", f"={f.draws!r} must be an integer >= 0 (0: enough for "
          "the fine-tune's steps)")
  if not _is_int(f.seed) or f.seed < 0:
    _fail("seed", f"={f.seed!r} must be an integer >= 0")
  names = tuple(f.metrics) if not isinstance(f.metrics, str) else None
  if not names:
    _fail("metrics", f"={f.metrics!r} must be a non-empty tuple of metric "
          "names")
  known = metric_registry.names()
  for n in names:
    if n not in known:
      _fail("metrics", f": unknown metric {n!r} (known: {list(known)})")
  if enabled(config) and config.metrics.fill not in FILLS:
    _fail("enabled", f": config.metrics.fill={config.metrics.fill!r} is not "
          f"a fill the fine-tune draws; use one of {list(FILLS)}")
