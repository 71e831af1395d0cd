"""Saliency maps computed elsewhere (Captum, Zennit, shap, ...), benchmarked
as the project's own.

`config.explain.maps = PATH` names a folder with one file per method and
split:

  PATH/<method>/train.npy   float [N_train, H, W, C] or [N_train, H, W]
  PATH/<method>/test.npy    float [N_test, H, W, C] or [N_test, H, W]

Row i is the map of image i of the split, in the order the dataset yields it
(the `index` of `pipeline.eval_iterator`), at the model's input geometry
(`data.image_size`; C the dataset's channels). A `<split>.npz` instead holds
`maps` (as above) and `index` (int [N]: the split's image index of each row,
rows in any order). [N, H, W] maps rank pixels (`explain.granularity=
'pixel'`); value granularity needs [N, H, W, C].

A folder is a method: the estimators `<method>`, `sq.<method>`,
`blur.<method>` and `random_smooth.<method>` of `config.explain.estimators`
rank its maps with the transform, granularity and blur that native maps of
that name would get, and the rank store, the grid, the metrics and the report
run on them unchanged. Folders that no estimator names are ignored. A folder
named like a built-in method (`gradient`) is refused unless
`config.explain.maps_replace=True` says that its maps replace the built-in
ones.

The rank stores of these methods depend on the maps' content: `fingerprints`
hashes the arrays (not the path or the file's time), so editing one map makes
exactly the artifacts downstream of it stale.
"""

import hashlib
import io
import os
import zipfile
from typing import Any, Sequence

import numpy as np

from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import estimator_names as names
from roar_jax.data import errors

SPLITS = ("train", "test")
SUFFIXES = (".npy", ".npz")
# Rows hashed or checked for NaN at a time: a memory-mapped CIFAR-10 train
# split (600 MB of float32) is never read whole.
_CHUNK = 1024
# Out of scope: what re-explains a model that only the project has.
NOT_SUPPORTED = ("--mode=sanity recomputes the maps of randomized models, "
                 "which maps computed elsewhere cannot give; run it on the "
                 "project's own estimators (drop config.explain.maps)")


def folder(config) -> str:
  """`config.explain.maps` ('' when every map is computed here)."""
  return str(config.explain.get("maps") or "")


def methods(config) -> tuple[str, ...]:
  """The methods whose maps come from `config.explain.maps`: the grid's
  methods with a folder there, in the grid's order.

  Raises:
    errors.DataError: the folder does not exist, or holds maps for none of
      the grid's estimators.
  """
  path = folder(config)
  if not path:
    return ()
  if not workdir_lib.exists(path):
    raise errors.DataError(f"config.explain.maps={path}: no such folder")
  present = set(workdir_lib.listdir(path))
  wanted = [names.maps_method(e) for e in config.explain.estimators]
  found = tuple(dict.fromkeys(m for m in wanted if m in present))
  if not found:
    raise errors.DataError(
        f"config.explain.maps={path}: no folder named after an estimator of "
        f"config.explain.estimators={list(config.explain.estimators)} (it "
        f"holds {sorted(present)}); expected PATH/<estimator>/train.npy")
  return found


def clash(config, builtin: Sequence[str]) -> str | None:
  """Why the external methods may not be used as named (None: they may).

  A folder named like a built-in method would silently stand for it in the
  report, so it must be asked for: `config.explain.maps_replace=True`.
  """
  same = [m for m in methods(config) if m in builtin]
  if not same or config.explain.get("maps_replace"):
    return None
  return (f"config.explain.maps={folder(config)}: {same} are built-in "
          "estimators; rename the folders (e.g. 'captum_ig') or set "
          "config.explain.maps_replace=True to benchmark these maps in their "
          "place")


def split_file(config, method: str, split: str) -> str:
  """PATH/<method>/<split>.npy or .npz (exactly one of them).

  Raises:
    errors.DataError: neither or both exist.
  """
  base = workdir_lib.join(folder(config), method, split)
  present = [base + s for s in SUFFIXES if workdir_lib.exists(base + s)]
  if len(present) != 1:
    what = "no" if not present else "two"
    raise errors.DataError(f"{base}.npy: {what} {split} maps for {method!r} "
                           f"(expected one of {base}.npy, {base}.npz)")
  return present[0]


def read(path: str) -> tuple[np.ndarray, np.ndarray | None]:
  """(maps, index or None) of one file; a local .npy is memory-mapped.

  Raises:
    errors.DataError: the file cannot be read, or an .npz lacks `maps`.
  """
  try:
    if path.endswith(".npy"):
      if workdir_lib.is_remote(path):
        return np.load(io.BytesIO(workdir_lib.read_bytes(path))), None
      return np.load(path, mmap_mode="r"), None
    with np.load(io.BytesIO(workdir_lib.read_bytes(path))) as z:
      if "maps" not in z.files:
        raise errors.DataError(f"{path}: no 'maps' array (it holds "
                               f"{z.files}); expected 'maps' and 'index'")
      index = z["index"] if "index" in z.files else None
      return z["maps"], index
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    if isinstance(e, errors.DataError):
      raise
    raise errors.DataError(f"{path}: cannot be read as maps "
                           f"({errors.first_line(e)})") from None


def check(path: str, maps: np.ndarray, index: np.ndarray | None, *,
          num: int, image_shape: tuple[int, int, int], granularity: str):
  """Refuses maps that do not fit the split, in one line naming the file.

  Args:
    path: the file (for the message).
    maps: its maps.
    index: its index (an .npz's), or None (row i is image i).
    num: the split's number of images.
    image_shape: (H, W, C) of the images as the model sees them.
    granularity: `config.explain.granularity`.

  Raises:
    errors.DataError: dtype not floating point, wrong shape or count, NaN or
      inf, an index that misses or repeats images.
  """
  def fail(text):
    raise errors.DataError(f"{path}: {text}")

  if not np.issubdtype(maps.dtype, np.floating):
    fail(f"dtype {maps.dtype}; expected floating-point maps (float16, "
         "float32 or float64)")
  h, w, c = image_shape
  if maps.ndim not in (3, 4) or maps.shape[1:3] != (h, w) or (
      maps.ndim == 4 and maps.shape[3] != c):
    fail(f"shape {tuple(maps.shape)}; expected [N, {h}, {w}, {c}] or "
         f"[N, {h}, {w}] (the images as the model sees them)")
  if maps.ndim == 3 and granularity != "pixel":
    fail(f"[N, H, W] maps rank pixels, but config.explain.granularity="
         f"{granularity!r} ranks every value: give [N, {h}, {w}, {c}] maps")
  if len(maps) != num:
    fail(f"{len(maps)} maps; the split has {num} images")
  if index is not None:
    _check_index(path, np.asarray(index), num)
  for start in range(0, len(maps), _CHUNK):
    finite = np.isfinite(maps[start:start + _CHUNK]).reshape(
        len(maps[start:start + _CHUNK]), -1).all(axis=1)
    if not finite.all():
      row = start + int(np.argmin(finite))
      fail(f"NaN or inf in the map of row {row}")


def _check_index(path: str, index: np.ndarray, num: int):
  """An .npz's index must hold every image of the split exactly once."""
  def fail(text):
    raise errors.DataError(f"{path}: {text}")

  if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
    fail(f"index must be int [N], got {index.dtype} {index.shape}")
  if len(index) != num:
    fail(f"index has {len(index)} entries for {num} maps")
  if index.size and (index.min() < 0 or index.max() >= num):
    fail(f"index entries must lie in [0, {num}), got [{index.min()}, "
         f"{index.max()}]")
  missing = np.setdiff1d(np.arange(num), index)
  if missing.size:
    fail(f"index misses {missing.size} of the split's images (e.g. "
         f"{missing[:3].tolist()}); every image needs a map")


_HASHES: dict[tuple[str, int, int], str] = {}


def content_hash(path: str) -> str:
  """A hash of a file's arrays (dtype, shape, values; an .npz's index too):
  the same maps saved again hash the same, any changed value differently.

  Hashed once per process and file version (size, modification time): the
  key, not the hash, reads the file's time.
  """
  try:
    stat = os.stat(path)
    key = (path, stat.st_size, stat.st_mtime_ns)
  except OSError:  # A remote file: hashed each time.
    key = None
  if key in _HASHES:
    return _HASHES[key]
  maps, index = read(path)
  h = hashlib.sha256()
  for array in (maps, index):
    if array is None:
      continue
    h.update(f"{array.dtype.str}{tuple(array.shape)}".encode())
    for start in range(0, len(array), _CHUNK):
      h.update(np.ascontiguousarray(array[start:start + _CHUNK]).tobytes())
  out = h.hexdigest()[:16]
  if key is not None:
    _HASHES[key] = out
  return out


def fingerprints(config) -> dict[str, dict[str, Any]]:
  """Per external method, the fields that stand for its maps in the rank
  stores' provenance: {'explain.maps.<method>.<split>': content hash}."""
  return {m: {f"explain.maps.{m}.{s}": content_hash(split_file(config, m, s))
              for s in SPLITS} for m in methods(config)}


class Maps:
  """The external maps of a run, checked against its dataset.

  Attributes:
    methods: the external methods.
  """

  def __init__(self, config, source):
    """Opens and checks every external file of the grid.

    Args:
      config: the experiment config (`config.explain`, `config.data`).
      source: the dataset's Source (split sizes, channels).

    Raises:
      errors.DataError: naming the first file that does not fit.
    """
    self.methods = methods(config)
    self._maps, self._row_of = {}, {}
    if not self.methods:
      return  # A grid of the project's own maps: nothing to open.
    size = int(config.data.image_size)
    shape = (size, size, int(source.info.image_shape[-1]))
    for m in self.methods:
      for split in SPLITS:
        path = split_file(config, m, split)
        maps, index = read(path)
        num = int(source.info.num_examples[split])
        check(path, maps, index, num=num, image_shape=shape,
              granularity=config.explain.granularity)
        row_of = None
        if index is not None:
          row_of = np.empty(num, np.int64)
          row_of[np.asarray(index)] = np.arange(num)
        self._maps[m, split], self._row_of[m, split] = maps, row_of

  def lookup(self, method: str, split: str, indices) -> np.ndarray:
    """float32 [n, H, W, C or 1]: the maps of the images `indices`."""
    indices = np.asarray(indices, np.int64)
    row_of = self._row_of[method, split]
    rows = indices if row_of is None else row_of[indices]
    # Sorted reads of a memory-mapped file touch each page once.
    order = np.argsort(rows, kind="stable")
    maps = np.empty((len(rows),) + self._maps[method, split].shape[1:],
                    np.float32)
    maps[order] = self._maps[method, split][rows[order]]
    return maps if maps.ndim == 4 else maps[..., None]
