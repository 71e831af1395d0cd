"""Estimator options: defaults (the ROAR paper's), validation, chunk sizing."""

import dataclasses
from typing import Any, Optional

import jax
import numpy as np

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
    occlusion_window: side of occlusion's square window in pixels; None: the
      smaller image side / 8 (at least 1).
    occlusion_stride: step between windows; None: half the window (at least
      1). A last window is added at the far edge so every pixel is covered.
    rise_masks: N, RISE's random masks per image (4000, as Petsiuk et al.).
    rise_cells: side of RISE's grid of cells (8: an 8x8 grid).
    rise_keep: probability that a cell is kept (0.5).
    rise_probabilities: RISE scores a masked copy by the softmax probability
      of the explained class (True, as Petsiuk et al.) or by its logit.
    num_segments: superpixels of LIME and KernelSHAP (scikit-image SLIC's
      n_segments, 50); ignored when `segments=` is given.
    lime_samples: LIME's perturbed samples per image (1000; the first keeps
      every segment, as LIME does).
    lime_kernel_width: w in LIME's weights exp(-d^2 / w^2), d the cosine
      distance to the all-on sample (0.25).
    lime_ridge: the L2 penalty of LIME's weighted ridge regression (1.0, as
      LIME's Ridge; the intercept is not penalized).
    shap_samples: KernelSHAP's coalitions per image (1000); when an image has
      few segments (2^M - 2 <= shap_samples) every coalition is enumerated
      and the values are the exact Shapley values.
    xrai_steps: IG steps of XRAI per baseline (100, as PAIR's XRAI).
    xrai_min_pixel_diff: XRAI skips a segment that adds fewer pixels than
      this to the selection (50, as PAIR).
    xrai_max_segments: at most this many of XRAI's Felzenszwalb segments per
      image are kept (the largest; 512). PAIR's six scales give about 360.
    smooth_sigma: the Gaussian blur of `random_smooth`, in pixels (3.0);
      0 gives `random`'s ranking.
    eg_samples: Expected Gradients' (Captum's GradientShap) samples per
      image, each a reference drawn from `references` and a point drawn
      uniformly on the straight path to it.
    guided_ig_steps: Guided IG's steps along its path (PAIR's x_steps, 200).
    guided_ig_fraction: the fraction of features Guided IG moves per step
      (PAIR's 0.25).
    guided_ig_max_dist: Guided IG's largest relative distance from the
      straight path (PAIR's 0.02).
    blur_ig_steps: Blur IG's steps from the most blurred image (PAIR's 100).
    blur_ig_max_sigma: Blur IG's largest Gaussian sigma in pixels (PAIR's 50).
    blur_ig_grad_step: the sigma step of Blur IG's finite difference (PAIR's
      0.01).
    lrp_epsilon: the epsilon of LRP's epsilon rule (Zennit's 1e-6).
    lrp_gamma: the gamma of LRP's gamma rule (Zennit's 0.25).
    pixel_mean, pixel_std: per-channel (or scalar) statistics such that
      image * std + mean is the image in pixel space in [0, 1]: the
      normalization, declared here or by the Model (`saliency.explainable(
      ..., pixel_mean=, pixel_std=)`; the call's values win). Declared, the
      default `baseline` is the black image (`black_image`) and SLIC reads
      the pixel space. None: no default baseline (methods that read one need
      `baseline=`) and SLIC rescales each image from its own min and max to
      [0, 1] (what PAIR's XRAI does for Felzenszwalb; equal to the pixel
      space up to the per-channel differences of std).
  """
  num_samples: int = 15
  noise_scale: float = 0.15
  ig_steps: int = 25
  chunk_size: Optional[int] = None
  evaluations_per_step: Optional[int] = None
  fast_pooling: bool = True
  occlusion_window: Optional[int] = None
  occlusion_stride: Optional[int] = None
  rise_masks: int = 4000
  rise_cells: int = 8
  rise_keep: float = 0.5
  rise_probabilities: bool = True
  num_segments: int = 50
  lime_samples: int = 1000
  lime_kernel_width: float = 0.25
  lime_ridge: float = 1.0
  shap_samples: int = 1000
  xrai_steps: int = 100
  xrai_min_pixel_diff: int = 50
  xrai_max_segments: int = 512
  smooth_sigma: float = 3.0
  eg_samples: int = 32
  guided_ig_steps: int = 200
  guided_ig_fraction: float = 0.25
  guided_ig_max_dist: float = 0.02
  blur_ig_steps: int = 100
  blur_ig_max_sigma: float = 50.0
  blur_ig_grad_step: float = 0.01
  lrp_epsilon: float = 1e-6
  lrp_gamma: float = 0.25
  pixel_mean: Optional[tuple[float, ...]] = None
  pixel_std: Optional[tuple[float, ...]] = None

  def declares_normalization(self) -> bool:
    """Whether pixel_mean or pixel_std is given (the other: 0 or 1)."""
    return self.pixel_mean is not None or self.pixel_std is not None

  def occlusion_geometry(self, height: int, width: int) -> tuple[int, int]:
    """(window, stride) for an image of this size."""
    window = self.occlusion_window or max(1, min(height, width) // 8)
    return window, self.occlusion_stride or max(1, window // 2)


def black_image(pixel_mean, pixel_std) -> np.ndarray:
  """The black image (0 in pixel space) in the model's input space.

  The one place that maps black into the input space: the default baseline
  of `explain` and the explain stage's.

  Args:
    pixel_mean: per-channel (or scalar) mean of the normalization
      x = (pixel - mean) / std; None stands for 0.
    pixel_std: its standard deviation; None stands for 1.

  Returns:
    float32 [C] (or [1]), (0 - mean) / std: one pixel, broadcast over an
    image. Computed in float32, as the input pipeline normalizes.
  """
  mean = np.asarray(0.0 if pixel_mean is None else pixel_mean, np.float32)
  std = np.asarray(1.0 if pixel_std is None else pixel_std, np.float32)
  return ((np.float32(0) - mean.reshape(-1)) / std.reshape(-1)).astype(
      np.float32)


def statistics(name: str, value, owner: str) -> Optional[tuple[float, ...]]:
  """`pixel_mean`/`pixel_std` as a tuple of floats (None stays None).

  Args:
    name: 'pixel_mean' or 'pixel_std' (a std must be > 0).
    value: a scalar or a per-channel sequence or array.
    owner: who is given it, for the error message.

  Returns:
    The values, flattened to a tuple of floats.
  """
  if value is None:
    return None
  values = tuple(float(v) for v in np.ravel(value))
  if not values or (name == "pixel_std" and not all(v > 0 for v in values)):
    raise ValueError(f"{owner} {name}={values} must be one or more values"
                     f"{' > 0' if name == 'pixel_std' else ''}")
  return values


# Options that are arrays (not hashable), passed to the jitted call as
# arguments: `baseline` (one image, or one per image) of the methods
# registered with `baseline=True` (integrated gradients, DeepLIFT, Guided IG,
# occlusion, RISE, LIME, KernelSHAP); `references` [R, H, W, C] of those with
# `references=True` (DeepSHAP, Expected Gradients); `segments` (int labels
# [H, W] or [B, H, W]) of LIME and KernelSHAP, replacing SLIC.
ARRAY_OPTIONS = ("baseline", "references", "segments")

_POSITIVE_INTS = ("num_samples", "ig_steps", "chunk_size",
                  "evaluations_per_step", "occlusion_window",
                  "occlusion_stride", "rise_masks", "rise_cells",
                  "num_segments", "lime_samples", "shap_samples", "xrai_steps",
                  "xrai_max_segments", "eg_samples", "guided_ig_steps",
                  "blur_ig_steps")


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
  for name in ("fast_pooling", "rise_probabilities"):
    if name in static:
      static[name] = bool(static[name])
  for name in _POSITIVE_INTS:
    if name in static and static[name] is not None:
      value = static[name]
      if isinstance(value, bool) or not _is_int(value) or value < 1:
        raise ValueError(f"saliency option {name}={value!r} must be a "
                         "positive integer")
      static[name] = int(value)
  for name, low, high in (("noise_scale", 0, None), ("rise_keep", 0, 1),
                          ("lime_kernel_width", 0, None),
                          ("lime_ridge", 0, None),
                          ("xrai_min_pixel_diff", 0, None),
                          ("smooth_sigma", 0, 1024),
                          ("guided_ig_fraction", 0, 1),
                          ("guided_ig_max_dist", 0, None),
                          ("blur_ig_max_sigma", 0, None),
                          ("blur_ig_grad_step", 0, None),
                          ("lrp_epsilon", 0, None), ("lrp_gamma", 0, None)):
    if name in static:
      static[name] = _in_range(name, static[name], low, high)
  if "xrai_min_pixel_diff" in static:
    static["xrai_min_pixel_diff"] = int(static["xrai_min_pixel_diff"])
  if static.get("rise_keep") == 0 or static.get("lime_kernel_width") == 0:
    name = "rise_keep" if static.get("rise_keep") == 0 else (
        "lime_kernel_width")
    raise ValueError(f"saliency option {name}=0 must be > 0")
  for name in ("pixel_mean", "pixel_std"):
    if name in static:
      static[name] = statistics(name, static[name], "saliency option")
  return Options(**static), arrays


def _is_int(value) -> bool:
  try:
    return int(value) == value
  except (TypeError, ValueError):
    return False


def _in_range(name: str, value, low, high) -> float:
  try:
    number = float(value)
  except (TypeError, ValueError):
    number = float("nan")
  if not number >= low or (high is not None and not number <= high):
    bound = f">= {low}" if high is None else f"in [{low}, {high}]"
    raise ValueError(f"saliency option {name}={value!r} must be {bound}")
  return number
