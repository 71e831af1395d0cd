"""Estimator options: defaults (the ROAR paper's), validation, chunk sizing."""

import dataclasses
from typing import Any, Optional

import jax

# Model passes (forward + backward over one image) vectorized in one step by
# default. XLA:CPU runs convolution gradients fastest at batches of about 16-32
# (bench/saliency.py); accelerators want larger batches. Memory grows linearly
# with this number.
DEFAULT_EVALUATIONS_PER_STEP = {"cpu": 32}
DEFAULT_EVALUATIONS_PER_STEP_ACCELERATOR = 512


def default_evaluations_per_step() -> int:
  return DEFAULT_EVALUATIONS_PER_STEP.get(
      jax.default_backend(), DEFAULT_EVALUATIONS_PER_STEP_ACCELERATOR)


@dataclasses.dataclass(frozen=True)
class Options:
  """Static estimator options (hashable: part of the compilation cache key).

  Attributes:
    num_samples: J, noisy copies per image for sg./sg_sq./var. ensembles
      (15 as in the ROAR paper).
    noise_scale: noise stdev as a fraction of each image's value range
      (max - min), in the model's input space.
    ig_steps: m, Riemann steps of integrated gradients (25 as in the paper).
    chunk_size: images explained per vectorized step on each device; None or
      0 picks it from evaluations_per_step. Memory stays flat in the batch
      size.
    evaluations_per_step: about how many model passes (images x noise
      samples x IG steps) one vectorized step may run; None picks a default
      for the backend (32 on CPU, 512 on accelerators). When one image's J
      noisy copies exceed it, the copies are split into groups whose
      statistics are merged exactly (Chan et al.'s parallel variance).
    fast_pooling: differentiate max pooling through reshapes/slices instead
      of select_and_scatter (see lowering.py); same values, much faster on
      CPU.
  """
  num_samples: int = 15
  noise_scale: float = 0.15
  ig_steps: int = 25
  chunk_size: Optional[int] = None
  evaluations_per_step: Optional[int] = None
  fast_pooling: bool = True


# Options that are arrays (not hashable), passed to the jitted call as
# arguments: `baseline` of integrated gradients.
ARRAY_OPTIONS = ("baseline",)


def known_options() -> list[str]:
  return sorted([f.name for f in dataclasses.fields(Options)] +
                list(ARRAY_OPTIONS))


def from_kwargs(kwargs: dict[str, Any]) -> tuple[Options, dict[str, Any]]:
  """Splits `**options` into static Options and array options, validated."""
  fields = {f.name for f in dataclasses.fields(Options)}
  unknown = sorted(set(kwargs) - fields - set(ARRAY_OPTIONS))
  if unknown:
    raise ValueError(f"unknown saliency option(s) {unknown}; known: "
                     f"{known_options()}")
  static = {k: v for k, v in kwargs.items() if k in fields}
  arrays = {k: v for k, v in kwargs.items() if k in ARRAY_OPTIONS}
  for name in ("chunk_size", "evaluations_per_step"):
    if static.get(name) == 0:
      static[name] = None
  if "fast_pooling" in static:
    static["fast_pooling"] = bool(static["fast_pooling"])
  for name in ("num_samples", "ig_steps", "chunk_size",
               "evaluations_per_step"):
    if name in static and static[name] is not None:
      value = static[name]
      if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"saliency option {name}={value!r} must be a "
                         "positive integer")
      static[name] = int(value)
  if "noise_scale" in static:
    value = float(static["noise_scale"])
    if not value >= 0:
      raise ValueError(f"saliency option noise_scale={static['noise_scale']!r}"
                       " must be >= 0")
    static["noise_scale"] = value
  return Options(**static), arrays
