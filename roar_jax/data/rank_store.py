"""The rank store: every image's quantized removal order, per estimator.

Layout under the workdir:

  <workdir>/ranks/<estimator>/<split>-NNNNN-of-NNNNN.npz

Each shard holds `indices` (int64 [n], the images' global positions in their
split) and `levels` (uint8 [n, H, W] for pixel granularity or [n, H, W, C] for
value granularity; level q = rank in [q%, (q+1)%) of all positions, 0 the most
important). One stored ranking serves every threshold, ROAR and KAR, and ROAD.

A shard is written under a temporary name and renamed into place, so a shard
file that exists is complete: an interrupted explain stage resumes shard by
shard (`has_shard`, `missing_shards`) and nothing half-written is ever read.
Shards may hold any indices in any order (for example the slice of one JAX
process); reading checks that together they hold every index of the split
exactly once.
"""

import io
import os
import re
import threading
import zipfile

import numpy as np

from roar_jax import levels as levels_lib
from roar_jax import workdir as workdir_lib

RANKS_DIR = "ranks"
_SHARD_RE = re.compile(r"^(?P<split>.+)-(?P<shard>\d{5,})-of-(?P<num>\d{5,})"
                       r"\.npz$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")


def _check_name(value: str, field: str) -> str:
  if not isinstance(value, str) or not _NAME_RE.match(value) or ".." in value:
    raise ValueError(f"{field}={value!r} must be a plain name (letters, "
                     "digits, '_', '.', '-', '+', '='), usable as a file name")
  return value


def shard_name(split: str, shard: int, num_shards: int) -> str:
  """`<split>-NNNNN-of-NNNNN.npz`."""
  return f"{split}-{shard:05d}-of-{num_shards:05d}.npz"


def _npy_header(zf: zipfile.ZipFile, member: str):
  """(shape, dtype) of an array in an .npz, without reading its data."""
  with zf.open(member) as f:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
      shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    else:
      shape, _, dtype = np.lib.format.read_array_header_2_0(f)
  return shape, dtype


def _corrupt(path: str, error: Exception) -> workdir_lib.WorkdirError:
  text = str(error).splitlines()[0] if str(error) else ""
  return workdir_lib.WorkdirError(
      f"{path}: corrupt rank-store shard ({type(error).__name__}: {text}); "
      "delete it and rerun: its images are ranked again")


def _load(path: str, *members: str) -> tuple[np.ndarray, ...]:
  """Arrays of a shard; a shard that cannot be read is named.

  The shard's checksum is the zip format's CRC-32 of each member, which
  `zipfile` verifies whenever a member is read whole (as here): a flipped
  bit in the data fails the read. A flip in the zip or .npy headers fails
  the parse in any of several ways (BadZipFile, EOFError,
  NotImplementedError for a 'compression method', ...): all of them mean
  the file is corrupt.
  """
  data = workdir_lib.read_bytes(path)
  try:
    with np.load(io.BytesIO(data)) as z:
      return tuple(z[m] for m in members)
  except Exception as e:  # pylint: disable=broad-except
    raise _corrupt(path, e) from None


def _load_member(path: str, member: str) -> np.ndarray:
  return _load(path, member)[0]


class _SplitIndex:
  """Where every index of a split lives: shard file and row."""

  def __init__(self, paths, shard_of, row_of, level_shape):
    self.paths = paths          # list of shard file paths
    self.shard_of = shard_of    # int32 [N]: index -> position in `paths`
    self.row_of = row_of        # int64 [N]: index -> row in that shard
    self.level_shape = level_shape  # (H, W) or (H, W, C)

  @property
  def num_examples(self) -> int:
    return int(self.shard_of.size)


class RankStore:
  """Per-estimator, per-split sharded storage of quantized rankings."""

  def __init__(self, workdir: str, *, cache_shards: int = 2):
    """Opens (does not create) the store of a workdir.

    Args:
      workdir: the experiment's working directory.
      cache_shards: how many shards' levels `lookup` keeps in memory. Reads in
        index order touch one shard after another, so a small cache suffices.
    """
    self.workdir = os.fspath(workdir)
    self.root = workdir_lib.join(self.workdir, RANKS_DIR)
    self._cache_shards = max(1, int(cache_shards))
    self._lock = threading.Lock()
    self._indexes: dict[tuple[str, str], _SplitIndex] = {}
    self._cache: dict[str, np.ndarray] = {}  # path -> levels, oldest first

  # Writing.

  def shard_path(self, estimator: str, split: str, shard: int,
                 num_shards: int) -> str:
    """The file of one shard."""
    _check_name(estimator, "estimator")
    _check_name(split, "split")
    if not isinstance(num_shards, (int, np.integer)) or num_shards < 1:
      raise ValueError(f"num_shards={num_shards!r} must be a positive int")
    if not isinstance(shard, (int, np.integer)) or not 0 <= shard < num_shards:
      raise ValueError(f"shard={shard!r} must lie in [0, {num_shards})")
    return workdir_lib.join(self.root, estimator,
                        shard_name(split, int(shard), int(num_shards)))

  def write_shard(self, estimator: str, split: str, shard: int,
                  num_shards: int, indices, levels) -> str:
    """Writes one shard atomically (temporary name, then rename).

    Args:
      estimator: estimator name (a directory under ranks/).
      split: split name.
      shard: this shard's number in [0, num_shards).
      num_shards: how many shards the split has.
      indices: int [n] global indices of the shard's images.
      levels: uint8 [n, H, W] or [n, H, W, C], values in [0, 100).

    Returns:
      The shard's path.
    """
    path = self.shard_path(estimator, split, shard, num_shards)
    indices = np.asarray(indices)
    levels = np.asarray(levels)
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
      raise ValueError(f"indices must be a 1-D integer array, got "
                       f"{indices.dtype} {indices.shape}")
    if indices.size and indices.min() < 0:
      raise ValueError(f"indices must be non-negative, got {indices.min()}")
    if levels.dtype != np.uint8 or levels.ndim not in (3, 4):
      raise ValueError(f"levels must be uint8 [n, H, W] or [n, H, W, C], got "
                       f"{levels.dtype} {levels.shape}")
    if len(levels) != len(indices):
      raise ValueError(f"levels has {len(levels)} rows for {len(indices)} "
                       "indices")
    if levels.size and levels.max() >= levels_lib.NUM_LEVELS:
      raise ValueError(f"levels must lie in [0, {levels_lib.NUM_LEVELS}), "
                       f"got max {levels.max()}")
    buffer = io.BytesIO()
    # Uncompressed: levels hardly compress (they are near uniform over 0..99)
    # and lookups during training should not pay for inflating them.
    np.savez(buffer, indices=indices.astype(np.int64), levels=levels)
    workdir_lib.write_bytes(path, buffer.getvalue())
    with self._lock:
      self._indexes.pop((estimator, split), None)
      self._cache.pop(path, None)
    return path

  def shard_indices(self, estimator: str, split: str, shard: int,
                    num_shards: int) -> np.ndarray:
    """The global indices of one written shard's images, in its order."""
    return _load_member(self.shard_path(estimator, split, shard, num_shards),
                        "indices")

  # Completion.

  def has_shard(self, estimator: str, split: str, shard: int,
                num_shards: int) -> bool:
    """Whether a shard is complete (its file exists: writes are atomic)."""
    return workdir_lib.exists(
        self.shard_path(estimator, split, shard, num_shards))

  def missing_shards(self, estimator: str, split: str,
                     num_shards: int) -> list[int]:
    """The shard numbers of a split that are not written yet."""
    return [s for s in range(num_shards)
            if not self.has_shard(estimator, split, s, num_shards)]

  def is_complete(self, estimator: str, split: str, num_shards: int) -> bool:
    """Whether every shard of a split is written."""
    return not self.missing_shards(estimator, split, num_shards)

  def estimators(self) -> list[str]:
    """Estimators with at least one shard, sorted."""
    return [e for e in workdir_lib.listdir(self.root)
            if workdir_lib.path(workdir_lib.join(self.root, e)).is_dir()]

  # Reading.

  def _shard_files(self, estimator: str, split: str) -> list[str]:
    directory = workdir_lib.join(self.root, _check_name(estimator, "estimator"))
    _check_name(split, "split")
    found = {}
    for name in workdir_lib.listdir(directory):
      m = _SHARD_RE.match(name)
      if m and m.group("split") == split:
        found[(int(m.group("num")), int(m.group("shard")))] = name
    if not found:
      raise ValueError(f"no rankings of estimator {estimator!r} for split "
                       f"{split!r} under {directory}")
    counts = sorted({num for num, _ in found})
    if len(counts) > 1:
      raise ValueError(f"{directory} mixes shardings of split {split!r} "
                       f"(-of-{counts}); remove the stale ones")
    num = counts[0]
    missing = [s for s in range(num) if (num, s) not in found]
    if missing:
      raise ValueError(f"rankings of estimator {estimator!r}, split {split!r} "
                       f"are incomplete: shards {missing} of {num} missing "
                       f"under {directory}")
    return [workdir_lib.join(directory, found[(num, s)]) for s in range(num)]

  def _index(self, estimator: str, split: str) -> _SplitIndex:
    key = (estimator, split)
    with self._lock:
      if key in self._indexes:
        return self._indexes[key]
    paths = self._shard_files(estimator, split)
    all_indices, shard_ids, rows = [], [], []
    level_shape = None
    for s, path in enumerate(paths):
      data = workdir_lib.read_bytes(path)
      try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
          shape, dtype = _npy_header(zf, "levels.npy")
      except Exception as e:  # pylint: disable=broad-except
        raise _corrupt(path, e) from None  # As in `_load`.
      indices, = _load(path, "indices")
      if dtype != np.uint8 or len(shape) not in (3, 4) or (
          shape[0] != indices.shape[0]):
        raise ValueError(f"{path}: levels {dtype} {shape} do not fit "
                         f"{indices.shape[0]} indices")
      if level_shape is None:
        level_shape = tuple(shape[1:])
      elif tuple(shape[1:]) != level_shape:
        raise ValueError(f"{path}: levels of shape {tuple(shape[1:])}, other "
                         f"shards have {level_shape}")
      all_indices.append(indices.astype(np.int64))
      shard_ids.append(np.full(indices.shape[0], s, dtype=np.int32))
      rows.append(np.arange(indices.shape[0], dtype=np.int64))
    indices = np.concatenate(all_indices)
    n = indices.size
    counts = np.bincount(indices, minlength=n) if n else np.zeros(0, int)
    if counts.size > n or np.any(counts != 1):
      duplicated = np.nonzero(counts > 1)[0]
      absent = np.nonzero(counts[:n] == 0)[0]
      raise ValueError(
          f"rankings of estimator {estimator!r}, split {split!r} must hold "
          f"every index 0..N-1 exactly once ({n} entries): duplicated "
          f"{duplicated[:10].tolist()}, missing {absent[:10].tolist()}"
          + (f", beyond N: max {indices.max()}" if counts.size > n else ""))
    shard_of = np.empty(n, dtype=np.int32)
    row_of = np.empty(n, dtype=np.int64)
    shard_of[indices] = np.concatenate(shard_ids)
    row_of[indices] = np.concatenate(rows)
    index = _SplitIndex(paths, shard_of, row_of, level_shape)
    with self._lock:
      self._indexes[key] = index
    return index

  def num_examples(self, estimator: str, split: str) -> int:
    """N, the number of ranked images of a split."""
    return self._index(estimator, split).num_examples

  def level_shape(self, estimator: str, split: str) -> tuple[int, ...]:
    """(H, W) for pixel rankings, (H, W, C) for value rankings."""
    return self._index(estimator, split).level_shape

  def _shard_levels(self, path: str) -> np.ndarray:
    with self._lock:
      if path in self._cache:
        self._cache[path] = self._cache.pop(path)  # Most recent last.
        return self._cache[path]
    levels = _load_member(path, "levels")
    with self._lock:
      self._cache[path] = levels
      while len(self._cache) > self._cache_shards:
        self._cache.pop(next(iter(self._cache)))
    return levels

  def read(self, estimator: str, split: str) -> np.ndarray:
    """All levels of a split, ordered by index.

    Args:
      estimator: estimator name.
      split: split name.

    Returns:
      uint8 [N, H, W] or [N, H, W, C]; row i belongs to the image of index i.

    Raises:
      ValueError: shards missing, or indices not exactly 0..N-1 once each.
    """
    index = self._index(estimator, split)
    out = np.empty((index.num_examples,) + index.level_shape, dtype=np.uint8)
    for path in index.paths:
      indices, levels = _load(path, "indices", "levels")
      out[indices] = levels
    return out

  def lookup(self, estimator: str, split: str, indices) -> np.ndarray:
    """The levels of some images, in the order of `indices`.

    Args:
      estimator: estimator name.
      split: split name.
      indices: int [b] global indices.

    Returns:
      uint8 [b, H, W] or [b, H, W, C].
    """
    index = self._index(estimator, split)
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if indices.size and (indices.min() < 0 or
                         indices.max() >= index.num_examples):
      raise ValueError(f"indices outside [0, {index.num_examples}) for "
                       f"estimator {estimator!r}, split {split!r}: "
                       f"[{indices.min()}, {indices.max()}]")
    out = np.empty((indices.size,) + index.level_shape, dtype=np.uint8)
    shards = index.shard_of[indices]
    for s in np.unique(shards):
      sel = np.nonzero(shards == s)[0]
      levels = self._shard_levels(index.paths[s])
      out[sel] = levels[index.row_of[indices[sel]]]
    return out
