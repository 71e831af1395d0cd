"""A grid of saliency maps: rows = images, columns = estimators.

Like the ROAR paper's figure: the first column is the image (its class on
the left), then the ground truth where the data has one (the toy data's
`oracle` mask), then one map per estimator, in one of three views (as
Captum's `visualize_image_attr` offers them):

- 'gray' (default, the paper's): pixel importance = sum over channels of
  |map|, clipped at its 99th percentile, as PAIR's `VisualizeImageGrayscale`
  does; what ROAR ranks under the default `transform='abs'`.
- 'signed' (Captum's 'heat_map' with sign 'all'): the sum over channels of
  the signed map on a diverging red-blue scale centred at 0 (red positive,
  blue negative, white 0), symmetric at the 99th percentile of |sum|.
- 'overlay' (Captum's 'blended_heat_map'): the 'gray' importance as a heat
  map at half opacity over the grey image.

Uses bare matplotlib Figures (no pyplot), so no display and no global state
are involved.
"""

from typing import Mapping, Optional, Sequence

from matplotlib import figure
from matplotlib.backends import backend_agg
import numpy as np

VIEWS = ("gray", "signed", "overlay")
ORACLE_TITLE = "oracle (true mask)"
SIGNED_CMAP = "RdBu_r"  # Red positive, blue negative, white at 0.
OVERLAY_CMAP = "inferno"
OVERLAY_ALPHA = 0.5  # Captum's default `alpha_overlay`.


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


def signed_for_display(saliency_map: np.ndarray,
                       percentile: float = 99.0) -> np.ndarray:
  """A map [H, W, C] -> [H, W] in [-1, 1]: sum_c map over the `percentile`th
  percentile of its absolute value, clipped; 0 stays 0 (the scale's
  centre), so the sign of every pixel is kept."""
  m = np.asarray(saliency_map, np.float32)
  m = np.nan_to_num(m.sum(axis=-1) if m.ndim == 3 else m)
  scale = float(np.percentile(np.abs(m), percentile))
  if scale <= 0:
    return np.zeros_like(m)
  return np.clip(m / scale, -1.0, 1.0)


def _gray(image: np.ndarray) -> np.ndarray:
  """[H, W] or [H, W, 3] in [0, 1] -> its grey [H, W]."""
  return image.mean(axis=-1) if image.ndim == 3 else image


def mask_for_display(mask: np.ndarray) -> np.ndarray:
  """A ground-truth mask [H, W] or [H, W, C] -> [H, W] in [0, 1] (over its
  maximum, not a percentile: a mask of under 1% of the pixels stays
  visible)."""
  m = np.asarray(mask, np.float32)
  m = np.abs(m).max(axis=-1) if m.ndim == 3 else np.abs(m)
  top = float(m.max())
  return m / top if top > 0 else m


def _draw_map(ax, saliency_map: np.ndarray, image: np.ndarray, view: str,
              is_mask: bool = False):
  """One cell: `saliency_map` of `image` (already in [0, 1]) in `view`; a
  ground-truth mask (`is_mask`) in grey, or over the image in 'overlay'."""
  if is_mask:
    shown = mask_for_display(saliency_map)
    if view == "overlay":
      ax.imshow(_gray(image), cmap="gray", vmin=0.0, vmax=1.0)
      ax.imshow(shown, cmap=OVERLAY_CMAP, vmin=0.0, vmax=1.0,
                alpha=OVERLAY_ALPHA)
    else:
      ax.imshow(shown, cmap="gray", vmin=0.0, vmax=1.0)
  elif view == "signed":
    ax.imshow(signed_for_display(saliency_map), cmap=SIGNED_CMAP,
              vmin=-1.0, vmax=1.0)
  elif view == "overlay":
    ax.imshow(_gray(image), cmap="gray", vmin=0.0, vmax=1.0)
    ax.imshow(map_for_display(saliency_map), cmap=OVERLAY_CMAP, vmin=0.0,
              vmax=1.0, alpha=OVERLAY_ALPHA)
  else:
    ax.imshow(map_for_display(saliency_map), cmap="gray", vmin=0.0,
              vmax=1.0)


def _check(images, maps_by_estimator, names, oracle, view):
  if view not in VIEWS:
    raise ValueError(f"plot_grid: view={view!r}; expected one of "
                     f"{list(VIEWS)}")
  for name in names:
    if name not in maps_by_estimator:
      raise ValueError(f"save_grid: no maps for estimator {name!r}")
    if len(maps_by_estimator[name]) < len(images):
      raise ValueError(f"save_grid: {len(maps_by_estimator[name])} maps for "
                       f"{name!r} but {len(images)} images")
  if oracle is not None and len(oracle) < len(images):
    raise ValueError(f"plot_grid: {len(oracle)} oracle masks but "
                     f"{len(images)} images")


def plot_grid(images, maps_by_estimator: Mapping[str, np.ndarray], *,
              estimators: Optional[Sequence[str]] = None,
              row_labels: Optional[Sequence[str]] = None,
              oracle: Optional[np.ndarray] = None, view: str = "gray",
              title: Optional[str] = None, cell_inches: float = 1.4):
  """A matplotlib Figure: one row per image, the image then its maps.

  Args:
    images: [N, H, W, C] in any value range (rescaled per image).
    maps_by_estimator: {estimator: maps [N, H, W, C]} for the same images.
    estimators: column order (default: the mapping's order).
    row_labels: optional label per image (e.g. its class name), beside it.
    oracle: optional ground-truth masks [N, H, W] (or [N, H, W, C]), drawn
      in the column after the image (titled `ORACLE_TITLE`).
    view: 'gray', 'signed' or 'overlay' (the module's docstring).
    title: optional one-line title over the grid.
    cell_inches: size of one cell.

  Returns:
    The Figure (shown inline by notebooks).
  """
  images = np.asarray(images)
  names = list(estimators if estimators is not None else maps_by_estimator)
  _check(images, maps_by_estimator, names, oracle, view)
  # (title, maps, whether the maps are ground-truth masks)
  columns = [("image", None, False)] + (
      [(ORACLE_TITLE, oracle, True)] if oracle is not None else [])
  columns += [(n, maps_by_estimator[n], False) for n in names]
  rows, cols = len(images), len(columns)
  top = 0.4 if title else 0.0
  fig = figure.Figure(figsize=(cell_inches * cols,
                               cell_inches * rows + 0.4 + top))
  backend_agg.FigureCanvasAgg(fig)
  axes = fig.subplots(rows, cols, squeeze=False)
  for r in range(rows):
    img = image_for_display(images[r])
    axes[r, 0].imshow(img, cmap="gray" if img.ndim == 2 else None)
    if row_labels is not None:
      axes[r, 0].set_ylabel(str(row_labels[r]), fontsize=7)
    for c, (_, maps, is_mask) in enumerate(columns[1:], start=1):
      _draw_map(axes[r, c], np.asarray(maps[r], np.float32), img, view,
                is_mask=is_mask)
  for c, (name, _, _) in enumerate(columns):
    axes[0, c].set_title(name, fontsize=7)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  if title:
    fig.suptitle(title, fontsize=8)
  fig.tight_layout()
  return fig


def save_grid(path: str, images, maps_by_estimator: Mapping[str, np.ndarray],
              *, dpi: int = 100, **kwargs) -> str:
  """Writes `plot_grid(...)` at a local path, PNG or PDF by its suffix (mode
  0644 under the default umask); the pipeline writes through its workdir
  instead.

  Returns:
    path.
  """
  fmt = "pdf" if path.endswith(".pdf") else "png"
  plot_grid(images, maps_by_estimator, **kwargs).savefig(path, format=fmt,
                                                         dpi=dpi)
  return path
