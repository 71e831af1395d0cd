"""How similar two saliency maps are: the metrics of the sanity checks.

Adebayo et al. (2018, Sec. 2.2 and App. B) compare the map of the trained
model with the map of a randomized model, image by image, with four metrics;
this module computes them for a batch of map pairs and returns one value per
image, so that the caller reports a mean and a standard deviation.

Normalizations (the paper's visualization modes, which its metrics read):

- ABS map: absolute value, summed over channels, then
  (x - min) / (p99 - min) clipped to [0, 1], where p99 is the 99th percentile
  of the image's values (the released code's `VisualizeImageGrayscale`).
- Signed ("diverging") map: summed over channels WITHOUT the absolute value,
  divided by the 99th percentile of its absolute values and clipped to
  [-1, 1], so the sign survives and zero stays zero.

Both are monotone maps of the channel sum, so they change a rank correlation
only through the ties that the clip at the 99th percentile creates (the top
1% of positions tie at the maximum, as in the paper). When the 99th
percentile equals the minimum (a map with fewer than 1% non-zero positions),
the maximum replaces it, so a sparse map is not flattened to zeros.

Metrics (per image; `METRICS` names them):

- `spearman_abs`: Spearman rank correlation of the two ABS maps.
- `spearman_signed`: Spearman rank correlation of the two signed maps (the
  paper's "without absolute values", added in its v3 after Sundararajan and
  Taly 2018 pointed out that the absolute value hides sign changes).
- `ssim`: skimage SSIM of the two ABS maps with the paper's window of 5 and
  uniform weights, `data_range=1` (the maps lie in [0, 1]). The released code
  used Gaussian weights (an effective 11 x 11 window) and no data_range; the
  paper's stated window is followed here.
- `hog`: Pearson correlation (the paper; the released code used Spearman,
  selectable with `hog_correlation`) of the skimage HOG descriptors of the two
  ABS maps. The paper's 16 x 16 cells were for 299 x 299 inputs; the default
  here is 4 x 4 cells with 2 x 2 blocks, which gives 28 x 28 inputs a 7 x 7
  grid of cells.

With a `foreground` mask, `spearman_abs_fg` and `spearman_signed_fg` are the
same correlations restricted to the positions where the input differs from
the baseline (Sundararajan and Taly 2018): on Fashion-MNIST about half the
pixels are black, where Integrated Gradients and gradient x input are exactly
zero for every model, and those ties inflate the all-pixel correlations.

A correlation with a constant map is undefined and comes out as NaN (for
example GradCAM of a randomized model whose weighted activation map is
negative everywhere, hence zero after its ReLU); `summarize` ignores NaNs and
counts the images that remain.
"""

import dataclasses
from typing import Mapping

import numpy as np
from scipy import stats
from skimage import feature
from skimage import metrics as skmetrics

from roar_jax.benchmark.sanity import scoring

METRICS = ("spearman_abs", "spearman_signed", "ssim", "hog")
FOREGROUND_METRICS = ("spearman_abs_fg", "spearman_signed_fg")
HOG_CORRELATIONS = ("pearson", "spearman")


def options_from_section(cls, cfg: Mapping | None, section: str):
  """A dataclass of options from `config.sanity.<section>`; an unknown key
  is an error naming it."""
  cfg = dict(cfg or {})
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(cfg) - known)
  if unknown:
    raise ValueError(f"config.sanity.{section}: unknown fields {unknown}; "
                     f"known: {sorted(known)}")
  return cls(**cfg)


@dataclasses.dataclass(frozen=True)
class SimilarityOptions:
  """Parameters of the normalizations and metrics (see the module docstring).

  Attributes:
    percentile: the percentile at which the normalized maps are clipped.
    ssim_win_size: side of SSIM's (uniform) window; odd, at most the map size.
    hog_orientations: HOG orientation bins.
    hog_pixels_per_cell: side of a HOG cell, in pixels.
    hog_cells_per_block: side of a HOG normalization block, in cells.
    hog_correlation: 'pearson' (the paper) or 'spearman' (the released code).
  """
  percentile: float = 99.0
  ssim_win_size: int = 5
  hog_orientations: int = 9
  hog_pixels_per_cell: int = 4
  hog_cells_per_block: int = 2
  hog_correlation: str = "pearson"

  def __post_init__(self):
    if not 0.0 < self.percentile <= 100.0:
      raise ValueError(f"similarity.percentile={self.percentile} must lie in "
                       "(0, 100]")
    if self.ssim_win_size < 3 or self.ssim_win_size % 2 == 0:
      raise ValueError(f"similarity.ssim_win_size={self.ssim_win_size} must "
                       "be an odd integer >= 3")
    if self.hog_correlation not in HOG_CORRELATIONS:
      raise ValueError(f"similarity.hog_correlation={self.hog_correlation!r}: "
                       f"expected one of {list(HOG_CORRELATIONS)}")
    for field in ("hog_orientations", "hog_pixels_per_cell",
                  "hog_cells_per_block"):
      if getattr(self, field) < 1:
        raise ValueError(f"similarity.{field}={getattr(self, field)} must be "
                         ">= 1")

  @classmethod
  def from_config(cls, cfg: Mapping | None) -> "SimilarityOptions":
    """Options from a config section (its unknown keys are an error)."""
    return options_from_section(cls, cfg, "similarity")


def _as_batch(maps) -> np.ndarray:
  """[N, H, W, C] float64 from [N, H, W, C] or [N, H, W] maps."""
  maps = np.asarray(maps, np.float64)
  if maps.ndim == 3:
    maps = maps[..., None]
  if maps.ndim != 4:
    raise ValueError(f"maps must be [N, H, W, C] or [N, H, W], got shape "
                     f"{maps.shape}")
  return maps


def normalize_abs(maps, percentile: float = 99.0) -> np.ndarray:
  """The ABS maps: |map| summed over channels, scaled and clipped to [0, 1].

  Args:
    maps: saliency maps [N, H, W, C] (or [N, H, W]).
    percentile: the value mapped to 1; larger values clip.

  Returns:
    float64 [N, H, W] in [0, 1]; all zeros for a constant map.
  """
  total = np.abs(_as_batch(maps)).sum(axis=-1)
  flat = total.reshape(len(total), -1)
  lo = flat.min(axis=1)
  hi = np.percentile(flat, percentile, axis=1)
  # A map with fewer than (100 - percentile)% positions above its minimum
  # would otherwise divide by zero; its maximum is the natural scale.
  hi = np.where(hi > lo, hi, flat.max(axis=1))
  span = hi - lo
  safe = np.where(span > 0, span, 1.0)
  out = (total - lo[:, None, None]) / safe[:, None, None]
  out = np.where((span > 0)[:, None, None], out, 0.0)
  return np.clip(out, 0.0, 1.0)


def normalize_signed(maps, percentile: float = 99.0) -> np.ndarray:
  """The signed (diverging) maps: the channel sum over its |p99|, in [-1, 1].

  Args:
    maps: saliency maps [N, H, W, C] (or [N, H, W]).
    percentile: the percentile of the absolute values mapped to +-1.

  Returns:
    float64 [N, H, W] in [-1, 1]; all zeros for an all-zero map.
  """
  total = _as_batch(maps).sum(axis=-1)
  mag = np.abs(total).reshape(len(total), -1)
  span = np.percentile(mag, percentile, axis=1)
  span = np.where(span > 0, span, mag.max(axis=1))
  safe = np.where(span > 0, span, 1.0)
  out = total / safe[:, None, None]
  out = np.where((span > 0)[:, None, None], out, 0.0)
  return np.clip(out, -1.0, 1.0)


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Pearson correlation of each row pair of a, b [N, D]; NaN if one is flat."""
  a = a - a.mean(axis=1, keepdims=True)
  b = b - b.mean(axis=1, keepdims=True)
  den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
  num = (a * b).sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def spearman(a, b, mask=None) -> np.ndarray:
  """Spearman rank correlation of each image pair (ties get average ranks).

  Args:
    a, b: [N, H, W] (or [N, D]) arrays.
    mask: optional bool [N, H, W]: correlate only these positions.

  Returns:
    float64 [N]; NaN where either side is constant (or fewer than 2
    positions are selected).
  """
  a = np.asarray(a, np.float64).reshape(len(a), -1)
  b = np.asarray(b, np.float64).reshape(len(b), -1)
  if a.shape != b.shape:
    raise ValueError(f"maps to compare differ in shape: {a.shape} vs "
                     f"{b.shape}")
  if mask is None:
    return _rowwise_pearson(scoring.average_ranks(a),
                            scoring.average_ranks(b))
  mask = np.asarray(mask, bool).reshape(a.shape)
  out = np.full(len(a), np.nan)
  for i in range(len(a)):
    sel = mask[i]
    if sel.sum() >= 2:
      out[i] = _rowwise_pearson(stats.rankdata(a[i, sel])[None],
                                stats.rankdata(b[i, sel])[None])[0]
  return out


def ssim(a01, b01, *, win_size: int = 5) -> np.ndarray:
  """SSIM of each pair of [0, 1] maps [N, H, W]: uniform window, data_range 1."""
  a01, b01 = np.asarray(a01, np.float64), np.asarray(b01, np.float64)
  if min(a01.shape[1:]) < win_size:
    raise ValueError(f"similarity.ssim_win_size={win_size} exceeds the map "
                     f"size {a01.shape[1:]}")
  return np.array([
      skmetrics.structural_similarity(x, y, win_size=win_size, data_range=1.0,
                                      gaussian_weights=False)
      for x, y in zip(a01, b01)], np.float64)


def hog_features(maps01, options: SimilarityOptions) -> np.ndarray:
  """HOG descriptors [N, D] of [0, 1] maps [N, H, W]."""
  p, c = options.hog_pixels_per_cell, options.hog_cells_per_block
  maps01 = np.asarray(maps01, np.float64)
  if min(maps01.shape[1:]) < p * c:
    raise ValueError(
        f"similarity.hog_pixels_per_cell={p} x hog_cells_per_block={c} "
        f"exceeds the map size {maps01.shape[1:]}")
  return np.stack([
      feature.hog(m, orientations=options.hog_orientations,
                  pixels_per_cell=(p, p), cells_per_block=(c, c),
                  feature_vector=True)
      for m in maps01])


def hog_similarity(a01, b01, options: SimilarityOptions) -> np.ndarray:
  """Correlation of the HOG descriptors of each pair of [0, 1] maps."""
  fa, fb = hog_features(a01, options), hog_features(b01, options)
  if options.hog_correlation == "spearman":
    return spearman(fa, fb)
  return _rowwise_pearson(fa, fb)


def compare(maps_a, maps_b, *, options: SimilarityOptions | None = None,
            foreground=None) -> dict[str, np.ndarray]:
  """Every metric, image by image, between two batches of maps.

  Args:
    maps_a: reference maps [N, H, W, C] (the trained model's).
    maps_b: maps to compare [N, H, W, C] (a randomized model's).
    options: normalization and metric parameters.
    foreground: optional bool [N, H, W], the positions where the input
      differs from the baseline; adds the `*_fg` correlations.

  Returns:
    metric name -> float64 [N] (NaN where undefined).
  """
  options = options or SimilarityOptions()
  a, b = _as_batch(maps_a), _as_batch(maps_b)
  if a.shape[:3] != b.shape[:3]:
    raise ValueError(f"maps to compare differ in shape: {a.shape} vs "
                     f"{b.shape}")
  abs_a = normalize_abs(a, options.percentile)
  abs_b = normalize_abs(b, options.percentile)
  sig_a = normalize_signed(a, options.percentile)
  sig_b = normalize_signed(b, options.percentile)
  out = {
      "spearman_abs": spearman(abs_a, abs_b),
      "spearman_signed": spearman(sig_a, sig_b),
      "ssim": ssim(abs_a, abs_b, win_size=options.ssim_win_size),
      "hog": hog_similarity(abs_a, abs_b, options),
  }
  if foreground is not None:
    foreground = np.asarray(foreground, bool)
    if foreground.shape != abs_a.shape:
      raise ValueError(f"foreground mask has shape {foreground.shape}, the "
                       f"maps {abs_a.shape}")
    out["spearman_abs_fg"] = spearman(abs_a, abs_b, foreground)
    out["spearman_signed_fg"] = spearman(sig_a, sig_b, foreground)
  return out


def random_maps(shape, seed) -> np.ndarray:
  """Independent N(0, 1) maps: the paper's "random mask" for the floor.

  Args:
    shape: [N, H, W, C].
    seed: anything `np.random.default_rng` takes (an int or a list of ints).

  Returns:
    float32 maps of `shape`.
  """
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def summarize(values) -> dict[str, float]:
  """Mean and std over images, ignoring NaN; n counts the images used."""
  values = np.asarray(values, np.float64)
  finite = values[np.isfinite(values)]
  if not len(finite):
    return {"mean": float("nan"), "std": float("nan"), "n": 0}
  return {"mean": float(finite.mean()), "std": float(finite.std()),
          "n": int(len(finite))}
