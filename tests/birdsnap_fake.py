"""A fake Birdsnap manual_dir in the official layout (list files and JPEGs as
get_birdsnap.py leaves them), shared by the Birdsnap builder's tests and the
paper-pipeline test."""

import hashlib
import os

import numpy as np
import PIL.Image

from roar_jax.data import birdsnap

SPECIES = [  # id, common, scientific, dir
    (1, "Blue Jay", "Cyanocitta cristata", "Blue_Jay"),
    (2, "Cooper's Hawk", "Accipiter cooperii", "Coopers_Hawk"),
    (3, "Snow Goose", "Chen caerulescens", "Snow_Goose"),
]
# images.txt order, interleaved across species and not sorted by file name, so
# that a builder that grouped or sorted the paths would be caught.
ROWS = [(3, "Snow_Goose/0107.jpg"), (1, "Blue_Jay/0311.jpg"),
        (2, "Coopers_Hawk/0005.jpg"), (1, "Blue_Jay/0002.jpg"),
        (3, "Snow_Goose/0020.jpg"), (2, "Coopers_Hawk/0899.jpg"),
        (1, "Blue_Jay/0150.jpg"), (3, "Snow_Goose/0003.jpg"),
        (2, "Coopers_Hawk/0042.jpg"), (1, "Blue_Jay/0077.jpg"),
        (2, "Coopers_Hawk/0300.jpg"), (3, "Snow_Goose/0500.jpg")]
TEST_PATHS = ["Blue_Jay/0002.jpg", "Snow_Goose/0003.jpg",
              "Coopers_Hawk/0300.jpg"]
HEADER = ["url", "md5", "path", "species_id", "bb_x1", "bb_y1", "bb_x2",
          "bb_y2", "back_x", "back_y", "beak_x", "beak_y"]


def value(row: int) -> int:
  """The gray level of the image in images.txt row `row` (0-based)."""
  return (10 + 20 * row) % 256


def grouped_rows(per_species: int = 8, order: int = 1):
  """`per_species` images per species, listed species by species (`order`
  -1: reversed)."""
  rows = [(species_id, f"{d}/{i:04d}.jpg") for species_id, _, _, d in SPECIES
          for i in range(per_species)]
  return rows[::order]


def _write_image(path: str, row: int, shape: tuple[int, int]):
  """A solid gray JPEG of `shape` (H, W); its md5."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = np.full((*shape, 3), value(row), np.uint8)
  PIL.Image.fromarray(image).save(path, format="JPEG", quality=95)
  with open(path, "rb") as f:
    return hashlib.md5(f.read()).hexdigest()


def make_manual_dir(root, rows=ROWS, test_paths=TEST_PATHS,
                    shape: tuple[int, int] = (16, 16)) -> str:
  """Writes the list files and the images of `rows` as get_birdsnap.py
  leaves them.

  Args:
    root: the folder to create (the manual_dir).
    rows: (species_id, path) of images.txt, in order.
    test_paths: the paths of test_images.txt.
    shape: (H, W) of every image; each is one gray level, `value(row)`.

  Returns:
    `root` as a string.
  """
  root = str(root)
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, "species.txt"), "w") as f:
    f.write("id\tcommon\tscientific\tdir\n")
    for s in SPECIES:
      f.write("\t".join(map(str, s)) + "\n")
  lines = ["\t".join(HEADER)]
  for row, (species_id, path) in enumerate(rows):
    md5 = _write_image(os.path.join(root, birdsnap.IMAGE_SUBDIR, path), row,
                       shape)
    lines.append("\t".join(
        [f"http://example.com/{row}.jpg", md5, path, str(species_id)]
        + ["10", "10", "90", "90", "50", "50", "20", "20"]))
  with open(os.path.join(root, "images.txt"), "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(os.path.join(root, "test_images.txt"), "w") as f:
    f.write("path\n" + "\n".join(test_paths) + "\n")
  return root
