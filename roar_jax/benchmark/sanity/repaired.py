"""The repaired model randomization tests: bottom-up, eMPRT, sMPRT, and
the random-logit test, as pure functions of maps.

Sources: Hedström, Weber, Lapuschkin, Höhne, "Sanity Checks Revisited: An
Exploration to Repair the Model Parameter Randomisation Test" (2024), and
Sixt, Granz, Landgraf, "When Explanations Lie" (ICML 2020); the definitions
and defaults are those of Quantus 0.6 (`EfficientMPRT`, `SmoothMPRT`,
`MPRT(layer_order=...)`, `RandomLogit`), checked against it on the torch
twin of the same model (tests/test_sanity_repaired.py).

- bottom-up order: randomize from the input layer upward, cumulatively
  (`bottom_up_steps`), beside the paper's top-down cascade and independent
  layers (`randomization.py`);
- eMPRT: the relative rise of an explanation's complexity, the discrete
  entropy of its histogram (100 equal-width bins over the map's own range,
  every entry of the map, channels included, natural log), from the
  trained to the fully randomized model: (H(e_rand) - H(e)) / H(e)
  (`discrete_entropy`, `emprt`). Quantus's default computes it only for the
  fully randomized model ("skip_layers"), takes neither the absolute value
  nor a normalization (a histogram over the map's own range does not see an
  affine rescaling anyway), and uses bottom-up order, whose last step has
  every layer randomized;
- sMPRT: MPRT on denoised maps: each map is the mean of the estimator's maps
  of `nr_samples` inputs, nr_samples - 1 of them with Gaussian noise of std
  noise_magnitude * (max - min of the image) and the last one clean
  (`smooth`); compared with Spearman's rank correlation of the absolute
  values over every entry (`spearman_flat`), layer by layer, bottom-up;
- random logit: the similarity of the map of the explained class and the
  map of one other class drawn uniformly (`other_classes`): Quantus's
  default is SSIM of the two maps, each divided by its maximum absolute
  value, flattened channel-first into one vector and compared with a 1-D
  window of 7 and the data range of the pair (`ssim_flat`).

The scores are computed for the whole batch at once (`scoring.py`), with
the values of SciPy's and scikit-image's per-image functions.
"""

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from roar_jax.benchmark.sanity import scoring
from roar_jax.benchmark.sanity import similarity

# The metric names the repaired tests add to a record's rows.
SPEARMAN_FLAT = "spearman_flat"  # MPRT's and sMPRT's (Quantus's default).
SSIM_FLAT = "ssim_flat"  # The random-logit test's (Quantus's default).
COMPLEXITY = "complexity"  # eMPRT's discrete entropy of one model's maps.
EMPRT = "emprt"  # eMPRT's score: the relative rise of the complexity.
METRICS = (SPEARMAN_FLAT, SSIM_FLAT, COMPLEXITY, EMPRT)


@dataclasses.dataclass(frozen=True)
class RepairedOptions:
  """Parameters of the repaired tests (`config.sanity.repaired`).

  Attributes:
    emprt_n_bins: histogram bins of eMPRT's discrete entropy (Quantus: 100).
    smprt_nr_samples: maps averaged per denoised map, the last one on the
      clean input (Quantus: 50).
    smprt_noise_magnitude: noise std as a fraction of the image's range
      (Quantus: 0.1).
    ssim_window: the 1-D SSIM window of the random-logit test (skimage's
      default, which Quantus uses: 7).
  """
  emprt_n_bins: int = 100
  smprt_nr_samples: int = 50
  smprt_noise_magnitude: float = 0.1
  ssim_window: int = 7

  def __post_init__(self):
    if self.emprt_n_bins < 2:
      raise ValueError(f"repaired.emprt_n_bins={self.emprt_n_bins} must be "
                       ">= 2")
    if self.smprt_nr_samples < 1:
      raise ValueError(f"repaired.smprt_nr_samples={self.smprt_nr_samples} "
                       "must be >= 1")
    if self.smprt_noise_magnitude < 0:
      raise ValueError("repaired.smprt_noise_magnitude="
                       f"{self.smprt_noise_magnitude} must be >= 0")
    if self.ssim_window < 3 or self.ssim_window % 2 == 0:
      raise ValueError(f"repaired.ssim_window={self.ssim_window} must be an "
                       "odd integer >= 3")

  @classmethod
  def from_config(cls, cfg: Mapping | None) -> "RepairedOptions":
    """Options from a config section (its unknown keys are an error)."""
    return similarity.options_from_section(cls, cfg, "repaired")


def bottom_up_steps(names: Sequence[str]) -> list[tuple[str, ...]]:
  """Layers randomized at each bottom-up step: from the input, cumulatively.

  Args:
    names: the layers, input -> output (`randomization.layer_names`).

  Returns:
    [(first,), (first, second), ..., all layers].
  """
  names = tuple(names)
  return [names[:k] for k in range(1, len(names) + 1)]


def _flat(maps) -> np.ndarray:
  """[N, D]: each [H, W, C] map flattened channel-first (C, H, W), the
  order in which a torch library sees it; float32 or float64 maps keep
  their type (exact in float64: the scores convert where they compute),
  others become float64."""
  maps = np.asarray(maps)
  if maps.dtype not in (np.float32, np.float64):
    maps = maps.astype(np.float64)
  if maps.ndim == 3:
    maps = maps[..., None]
  if maps.ndim != 4:
    raise ValueError(f"maps must be [N, H, W, C] or [N, H, W], got shape "
                     f"{maps.shape}")
  return np.transpose(maps, (0, 3, 1, 2)).reshape(len(maps), -1)


def discrete_entropy(maps, n_bins: int = 100) -> np.ndarray:
  """eMPRT's complexity: the entropy of each map's histogram.

  Args:
    maps: [N, H, W, C] (or [N, H, W]) maps; every entry counts.
    n_bins: equal-width bins over each map's own [min, max].

  Returns:
    float64 [N], in nats (0 for a constant map: one bin holds everything).
  """
  maps = np.asarray(maps)
  if maps.ndim not in (3, 4):
    raise ValueError(f"maps must be [N, H, W, C] or [N, H, W], got shape "
                     f"{maps.shape}")
  # A histogram does not see the order of the entries: no channel-first copy.
  return scoring.histogram_entropy(maps.reshape(len(maps), -1), n_bins)


def emprt(original, randomized, n_bins: int = 100) -> dict[str, np.ndarray]:
  """eMPRT: the relative rise of the complexity under randomization.

  Args:
    original: the trained model's maps [N, H, W, C].
    randomized: the fully randomized model's maps, same shape.
    n_bins: histogram bins of `discrete_entropy`.

  Returns:
    {'original': H(e) [N], 'randomized': H(e_rand) [N], 'rise':
     (H(e_rand) - H(e)) / H(e) [N] (NaN where H(e) is 0: a constant map)}.
  """
  h0 = discrete_entropy(original, n_bins)
  h1 = discrete_entropy(randomized, n_bins)
  with np.errstate(divide="ignore", invalid="ignore"):
    rise = np.where(h0 > 0, (h1 - h0) / np.where(h0 > 0, h0, 1.0), np.nan)
  return {"original": h0, "randomized": h1, "rise": rise}


def spearman_flat(maps_a, maps_b, *, take_abs: bool = True) -> np.ndarray:
  """MPRT's similarity (Quantus's default): Spearman's rank correlation of
  the absolute values over every entry of the two maps, channels included.

  Quantus also divides each batch by a positive constant first; a rank
  correlation does not see it.

  Args:
    maps_a, maps_b: [N, H, W, C] maps.
    take_abs: correlate |map| (MPRT's and sMPRT's default) or the map.

  Returns:
    float64 [N]; NaN where either map is constant.
  """
  a, b = _flat(maps_a), _flat(maps_b)
  if a.shape != b.shape:
    raise ValueError(f"maps to compare differ in shape: {a.shape} vs "
                     f"{b.shape}")
  if take_abs:
    a, b = np.abs(a), np.abs(b)
  return scoring.spearman(a, b)


class FlatSpearman:
  """`spearman_flat` as fn(reference, maps), ranking each reference once.

  A randomization test compares every step's maps with the same trained
  maps; their ranks are kept, keyed by the reference array itself (held,
  so its id is not reused), which must not be written into afterwards (the
  stage's references never are).
  """

  def __init__(self, *, take_abs: bool = True, capacity: int = 64):
    self.take_abs = take_abs
    self.capacity = capacity
    self._ranks: dict[int, tuple[Any, np.ndarray]] = {}

  def _ranked(self, maps) -> tuple[np.ndarray, np.ndarray]:
    # A rank correlation does not see the order of the entries, only that
    # both maps share it: no channel-first copy.
    flat = np.asarray(maps).reshape(len(maps), -1)
    return scoring.centered(scoring.average_ranks(
        np.abs(flat) if self.take_abs else flat))

  def __call__(self, maps_a, maps_b) -> np.ndarray:
    held = self._ranks.get(id(maps_a))
    if held is None or held[0] is not maps_a:
      if len(self._ranks) >= self.capacity:
        self._ranks.clear()
      held = self._ranks[id(maps_a)] = (maps_a, self._ranked(maps_a))
    b = self._ranked(maps_b)
    if held[1][0].shape != b[0].shape:
      raise ValueError(f"maps to compare differ in size: {held[1][0].shape} "
                       f"vs {b[0].shape}")
    return scoring.pearson_centered(held[1], b)


def _by_max(flat: np.ndarray) -> np.ndarray:
  """Each row over its maximum absolute value (an all-zero row unchanged)."""
  scale = np.abs(flat).max(axis=1, keepdims=True)
  return flat / np.where(scale > 0, scale, 1.0)


def ssim_flat(maps_a, maps_b, *, win_size: int = 7) -> np.ndarray:
  """The random-logit test's similarity (Quantus's default SSIM).

  Each map is divided by its maximum absolute value and flattened
  channel-first into one vector; SSIM with a uniform 1-D window of
  `win_size` and the data range max - min of the two vectors together.
  Quantus normalizes by the maximum over its whole batch (64 images by
  default), so its score of an image depends on the other images of the
  batch; here each map is its own batch (Quantus with batch_size=1).

  Args:
    maps_a, maps_b: [N, H, W, C] maps.
    win_size: odd window length.

  Returns:
    float64 [N].
  """
  a = _by_max(np.asarray(_flat(maps_a), np.float64))
  b = _by_max(np.asarray(_flat(maps_b), np.float64))
  if a.shape != b.shape:
    raise ValueError(f"maps to compare differ in shape: {a.shape} vs "
                     f"{b.shape}")
  data_range = (np.maximum(a.max(axis=1), b.max(axis=1))
                - np.minimum(a.min(axis=1), b.min(axis=1)))
  return scoring.ssim(a, b, win_size=win_size, data_range=data_range)


def other_classes(classes, num_classes: int, draws) -> np.ndarray:
  """One class other than `classes[i]` per image, uniformly.

  Quantus's rule: draw an index j in [0, num_classes - 2] and take the j-th
  of the other classes in increasing order.

  Args:
    classes: int [N], the classes explained.
    num_classes: K.
    draws: int [N] in [0, K - 2] (e.g. `rng.integers(0, K - 1, N)`).

  Returns:
    int64 [N]: draws[i] if draws[i] < classes[i], else draws[i] + 1.
  """
  classes, draws = np.asarray(classes), np.asarray(draws)
  if num_classes < 2:
    raise ValueError("the random-logit test needs at least 2 classes")
  if np.any((draws < 0) | (draws > num_classes - 2)):
    raise ValueError(f"draws must lie in [0, {num_classes - 2}]")
  return np.where(draws < classes, draws, draws + 1).astype(np.int64)


def noise_std(images, magnitude: float) -> np.ndarray:
  """sMPRT's noise std per image: magnitude * (max - min), [N, 1, 1, 1]."""
  images = np.asarray(images, np.float64)
  axes = tuple(range(1, images.ndim))
  return magnitude * (images.max(axis=axes, keepdims=True)
                      - images.min(axis=axes, keepdims=True))


def _add(total, maps):
  """total + maps, for arrays or {name: array} dicts (None: nothing yet)."""
  if isinstance(maps, Mapping):
    return {k: _add(None if total is None else total[k], v)
            for k, v in maps.items()}
  maps = np.asarray(maps, np.float64)
  return maps if total is None else total + maps


def smooth(explain_fn: Callable[[np.ndarray], Any], images, normals,
           magnitude: float):
  """sMPRT's denoised maps: the mean over noisy copies and the clean input.

  Args:
    explain_fn: images [N, H, W, C] -> maps [N, H, W, C], or a dict of such
      maps (one model, fixed classes).
    images: [N, H, W, C].
    normals: standard normal draws [S - 1, N, H, W, C]: sample k's noise is
      normals[k] * `noise_std(images, magnitude)`; the S-th sample is the
      clean input (as Quantus's SmoothMPRT does).
    magnitude: the noise std as a fraction of each image's range.

  Returns:
    float64 [N, H, W, C] (or a dict of them): the mean of the S maps.
  """
  images = np.asarray(images, np.float32)
  std = noise_std(images, magnitude)
  total = None
  for z in normals:
    noisy = (images + np.asarray(z, np.float64) * std).astype(np.float32)
    total = _add(total, explain_fn(noisy))
  total = _add(total, explain_fn(images))
  count = len(normals) + 1
  if isinstance(total, Mapping):
    return {k: v / count for k, v in total.items()}
  return total / count
