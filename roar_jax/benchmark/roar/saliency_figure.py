"""The explain stage's example grid: `report/saliency.png` and `.pdf`.

The first test images the stage explains, one row each, labelled with their
class (the dataset's class name when it has names, else 'class k'); on the
toy data, whose generator knows which pixels carry the class, the true mask
is the column after the image (titled `visualize.ORACLE_TITLE`), so every
estimator's map is read against the answer. The maps are drawn in the
'gray' view (|map| summed over channels: what ROAR ranks under the default
`transform='abs'`); `saliency.plot_grid(..., view='signed' | 'overlay')`
draws the same grid signed or over the image.
"""

from typing import Mapping, Optional, Sequence

import numpy as np

from roar_jax import workdir as workdir_lib
from roar_jax.data import synthetic
from roar_jax.saliency import visualize

FILES = ("saliency.png", "saliency.pdf")
DPI = 100


def class_labels(labels: Sequence[int],
                 class_names: Optional[Sequence[str]]) -> list[str]:
  """Each label's class name where `class_names` has it, else 'class k'."""
  names = list(class_names or ())
  return [names[int(k)] if 0 <= int(k) < len(names) else f"class {int(k)}"
          for k in labels]


def oracle_masks(config, indices: np.ndarray) -> Optional[np.ndarray]:
  """The toy generator's true masks [N, H, W] of test images `indices`;
  None for any other dataset (it has no ground truth)."""
  if config.data.name != "toy":
    return None
  return synthetic.toy_masks(config.data.toy, "test")[np.asarray(indices)]


def write(config, wd: workdir_lib.Workdir, images: np.ndarray,
          maps: Mapping[str, np.ndarray], *, labels: Sequence[int],
          indices: np.ndarray,
          class_names: Optional[Sequence[str]] = None) -> list[str]:
  """Writes the grid of `images` and their `maps` as saliency.png and .pdf.

  Args:
    config: the experiment config (its data decides the oracle column).
    wd: the workdir; the files go to its report folder.
    images: [N, H, W, C] test images, as the model saw them.
    maps: {estimator: maps [N, H, W, C]} of the same images.
    labels: each image's class.
    indices: each image's index in the test split.
    class_names: the dataset's class names, if it has them.

  Returns:
    The paths written.
  """
  fig = visualize.plot_grid(
      images, maps, row_labels=class_labels(labels, class_names),
      oracle=oracle_masks(config, indices),
      title=(f"Saliency maps of {len(images)} {config.data.name} test "
             "images: |map| summed over channels, to its 99th percentile"))
  paths = [wd.report(f) for f in FILES]
  for path in paths:
    workdir_lib.save_figure(fig, path, dpi=DPI)
  return paths
