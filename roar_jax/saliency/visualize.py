"""A PNG grid of saliency maps: rows = images, columns = estimators.

Like the ROAR paper's figure: the first column is the image, then one
grayscale map per estimator (pixel importance = sum over channels of |map|,
clipped at its 99th percentile, as PAIR's `VisualizeImageGrayscale` does).
Uses matplotlib's Agg canvas directly, so no display and no global pyplot
state are involved.
"""

from typing import Mapping, Optional, Sequence

import numpy as np


def image_for_display(image: np.ndarray) -> np.ndarray:
  """An input-space image [H, W, C] rescaled to [0, 1] (min-max, per image)."""
  image = np.asarray(image, np.float32)
  lo, hi = float(np.min(image)), float(np.max(image))
  image = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
  return image[..., 0] if image.shape[-1] == 1 else image


def map_for_display(saliency_map: np.ndarray,
                    percentile: float = 99.0) -> np.ndarray:
  """A map [H, W, C] -> [H, W] in [0, 1]: sum_c |map|, clipped and scaled."""
  m = np.asarray(saliency_map, np.float32)
  m = np.abs(m).sum(axis=-1) if m.ndim == 3 else np.abs(m)
  m = np.nan_to_num(m)
  top = float(np.percentile(m, percentile))
  lo = float(m.min())
  if top <= lo:
    return np.zeros_like(m)
  return np.clip((m - lo) / (top - lo), 0.0, 1.0)


def plot_grid(images, maps_by_estimator: Mapping[str, np.ndarray], *,
              estimators: Optional[Sequence[str]] = None,
              row_labels: Optional[Sequence[str]] = None,
              cell_inches: float = 1.4):
  """A matplotlib Figure: one row per image, the image then its maps.

  Args:
    images: [N, H, W, C] in any value range (rescaled per image).
    maps_by_estimator: {estimator: maps [N, H, W, C]} for the same images.
    estimators: column order (default: the mapping's order).
    row_labels: optional label per image (e.g. its class).
    cell_inches: size of one cell.

  Returns:
    The Figure (shown inline by notebooks).
  """
  # Imported here: matplotlib is slow to import and only this function uses it.
  # pylint: disable=g-import-not-at-top
  from matplotlib import figure
  from matplotlib.backends import backend_agg
  # pylint: enable=g-import-not-at-top

  images = np.asarray(images)
  names = list(estimators if estimators is not None else maps_by_estimator)
  for name in names:
    if name not in maps_by_estimator:
      raise ValueError(f"save_grid: no maps for estimator {name!r}")
    if len(maps_by_estimator[name]) < len(images):
      raise ValueError(f"save_grid: {len(maps_by_estimator[name])} maps for "
                       f"{name!r} but {len(images)} images")
  rows, cols = len(images), len(names) + 1
  fig = figure.Figure(figsize=(cell_inches * cols, cell_inches * rows + 0.4))
  backend_agg.FigureCanvasAgg(fig)
  axes = fig.subplots(rows, cols, squeeze=False)
  for r in range(rows):
    img = image_for_display(images[r])
    axes[r, 0].imshow(img, cmap="gray" if img.ndim == 2 else None)
    if row_labels is not None:
      axes[r, 0].set_ylabel(str(row_labels[r]), fontsize=7)
    for c, name in enumerate(names, start=1):
      axes[r, c].imshow(map_for_display(np.asarray(maps_by_estimator[name][r])),
                        cmap="gray", vmin=0.0, vmax=1.0)
  for c, title in enumerate(["image"] + names):
    axes[0, c].set_title(title, fontsize=7)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  return fig


def save_grid(path: str, images, maps_by_estimator: Mapping[str, np.ndarray],
              *, dpi: int = 100, **kwargs) -> str:
  """Writes `plot_grid(...)` as a PNG at a local path (mode 0644 under the
  default umask); the pipeline writes through its workdir instead.

  Returns:
    path.
  """
  plot_grid(images, maps_by_estimator, **kwargs).savefig(path, format="png",
                                                         dpi=dpi)
  return path
