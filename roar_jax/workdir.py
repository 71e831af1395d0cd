"""The workdir: where every artifact lives, how it is written, what made it.

One module owns the layout of `--workdir`; every stage asks it for paths and
writes through it:

  W/config.json                 the config as run, with the package version
  W/lock.json                   held by the one run that uses the workdir
  W/base/                       the base model (checkpoints, metrics.json)
  W/channel_mean.json           the training split's per-channel mean
  W/ranks/<estimator>/          the rank store, one folder per estimator
  W/datasets/<unit dataset>/    degraded datasets written as TFRecords
  W/no_retrain/<dataset>.json   the base model on a degraded test split
  W/retrain/<unit>/             one retrain (checkpoints, metrics.json)
  W/results/<unit>.json         its result record
  W/report/                     tables and figures (built aside, swapped in: report_folder.py)
  W/sanity/                     the sanity checks' artifacts
  W/stale/<time>/...            artifacts moved aside by --recompute

Every artifact records what made it (`provenance.py`); it is reused only when
its fingerprint matches.

Files: local paths and anything `etils.epath` reaches (gs://, s3://) go
through one layer. Writes are atomic: a local file is written under a
temporary name and renamed; an object store publishes an object only once its
upload completes, so there the final name is written directly. Nothing
half-written is ever read.
"""

import csv
import errno
import io
import json
import os
from typing import Any, Iterable, Mapping, Sequence

from etils import epath

from roar_jax import levels as levels_lib

PathLike = str | os.PathLike

CONFIG_FILE = "config.json"
LOCK_FILE = "lock.json"
METRICS_FILE = "metrics.json"


class WorkdirError(Exception):
  """A workdir file is missing, corrupt, locked or unwritable; the message
  names it."""


# ----------------------------------------------------------------------------
# The filesystem layer.


def path(p: PathLike) -> epath.Path:
  """`p` as an `epath.Path` (local, gs://, ...)."""
  return epath.Path(os.fspath(p))


def join(*parts: PathLike) -> str:
  """Joins path parts as strings, for local and remote paths alike."""
  return os.fspath(epath.Path(*[os.fspath(p) for p in parts]))


def is_remote(p: PathLike) -> bool:
  return "://" in os.fspath(p)


def exists(p: PathLike) -> bool:
  return path(p).exists()


def makedirs(p: PathLike):
  path(p).mkdir(parents=True, exist_ok=True)


def listdir(p: PathLike) -> list[str]:
  """Sorted names in a folder; [] if it does not exist."""
  d = path(p)
  if not d.exists():
    return []
  return sorted(c.name for c in d.iterdir())


def read_bytes(p: PathLike) -> bytes:
  try:
    return path(p).read_bytes()
  except FileNotFoundError:
    raise WorkdirError(f"{p}: file not found") from None


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def write_bytes(p: PathLike, data: bytes):
  """Writes a file atomically; readers see no file or the whole file.

  Local files get mode 0666 & ~umask (0644 by default), as `open` gives.

  Raises:
    WorkdirError: the file cannot be written (full disk, read-only folder,
      no permission), naming it.
  """
  target = path(p)
  try:
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_remote(p):
      target.write_bytes(data)
      return
    tmp = f"{os.fspath(p)}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
      with os.fdopen(fd, "wb") as f:
        f.write(data)
      os.chmod(tmp, 0o666 & ~_umask())
      os.replace(tmp, os.fspath(p))
    except BaseException:
      if os.path.exists(tmp):
        os.remove(tmp)
      raise
  except OSError as e:
    raise WorkdirError(f"cannot write {p}: {os_reason(e)}") from e


def os_reason(e: OSError) -> str:
  """A short reason for an OSError (no path, no traceback)."""
  if e.errno == errno.ENOSPC:
    return "no space left on the device"
  if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
    return "permission denied (read-only file system or folder?)"
  return e.strerror or str(e)


def write_text(p: PathLike, text: str):
  write_bytes(p, text.encode())


def write_json(p: PathLike, obj: Any):
  """Writes JSON atomically (sorted keys, so equal objects give equal bytes)."""
  write_text(p, json.dumps(obj, indent=2, sort_keys=True, default=json_default)
             + "\n")


def json_default(x):
  if hasattr(x, "tolist"):
    return x.tolist()
  if isinstance(x, (set, frozenset)):
    return sorted(x)
  return str(x)


def read_json(p: PathLike, *, missing_ok: bool = False) -> Any:
  """Reads JSON; a missing file is None if `missing_ok`.

  Raises:
    WorkdirError: the file is missing (unless `missing_ok`) or not valid JSON,
      naming it.
  """
  try:
    text = path(p).read_text()
  except FileNotFoundError:
    if missing_ok:
      return None
    raise WorkdirError(f"{p}: file not found") from None
  try:
    return json.loads(text)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise WorkdirError(f"{p} is corrupt (not valid JSON: {e}); move it aside "
                       "or rerun with --recompute") from None


def write_npz(p: PathLike, **arrays):
  import numpy as np  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  write_bytes(p, buf.getvalue())


def write_csv(p: PathLike, rows: Sequence[Mapping[str, Any]],
              columns: Sequence[str]):
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore",
                          lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  write_text(p, buf.getvalue())


def save_figure(fig, p: PathLike, **kwargs):
  """Saves a matplotlib figure atomically; the format follows the suffix."""
  buf = io.BytesIO()
  fmt = os.fspath(p).rsplit(".", 1)[-1]
  # No creation date in the metadata: an unchanged report is byte-identical.
  metadata = {"CreationDate": None} if fmt == "pdf" else {"Software": None}
  fig.savefig(buf, format=fmt, metadata=metadata, **kwargs)
  write_bytes(p, buf.getvalue())


def move(src: PathLike, dst: PathLike):
  """Moves a file or folder (rename where the file system allows)."""
  s, d = path(src), path(dst)
  d.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(src) and s.is_dir():
    for child in s.iterdir():
      move(child, d / child.name)
    s.rmtree(missing_ok=True)
  else:
    s.rename(d)


# ----------------------------------------------------------------------------
# The layout.


def unit_name(estimator: str, mode: str, threshold: float,
              seed: int | None = None, fill: str | None = None) -> str:
  """A unit's file-system name, e.g. `var.gradient__roar__t050__seed1`.

  The threshold is stored in whole percents, rounded as pixel removal
  rounds (`levels.threshold_level`); the config validation refuses
  thresholds that share one. A non-default fill is part of the name.
  """
  name = f"{estimator}__{mode}__{levels_lib.percent_name(threshold)}"
  if fill is not None:
    name += f"__{fill}"
  return name if seed is None else f"{name}__seed{seed}"


def as_workdir(workdir: "Workdir | PathLike") -> "Workdir":
  """`workdir` itself when it is a Workdir, else the Workdir of that root.

  The command line builds the Workdir once (`main.run`) and it travels as
  that object; entry points of the library also take a path."""
  return workdir if isinstance(workdir, Workdir) else Workdir(workdir)


class Workdir:
  """The paths of one workdir. Creates nothing by itself."""

  def __init__(self, root: PathLike):
    self.root = os.fspath(root)

  def __fspath__(self) -> str:
    return self.root

  def __str__(self) -> str:
    return self.root

  def sub(self, *parts: str) -> str:
    return join(self.root, *parts)

  @property
  def config_file(self) -> str:
    return self.sub(CONFIG_FILE)

  @property
  def lock_file(self) -> str:
    return self.sub(LOCK_FILE)

  @property
  def base(self) -> str:
    return self.sub("base")

  @property
  def channel_mean(self) -> str:
    return self.sub("channel_mean.json")

  def ranks(self, estimator: str | None = None) -> str:
    return self.sub("ranks", estimator) if estimator else self.sub("ranks")

  def dataset(self, name: str) -> str:
    return self.sub("datasets", name)

  def no_retrain(self, name: str) -> str:
    return self.sub("no_retrain", name + ".json")

  def retrain(self, name: str) -> str:
    return self.sub("retrain", name)

  def result(self, name: str) -> str:
    return self.sub("results", name + ".json")

  def report(self, name: str = "") -> str:
    return self.sub("report", name) if name else self.sub("report")

  def sanity(self, name: str = "") -> str:
    return self.sub("sanity", name) if name else self.sub("sanity")

  def stale(self, stamp: str) -> str:
    return self.sub("stale", stamp)


def write_config(wd: Workdir, config, mode: str):
  """W/config.json: the config as run, the package version and the mode."""
  import roar_jax  # pylint: disable=g-import-not-at-top
  write_json(wd.config_file, {
      "config": json.loads(config.to_json_best_effort(sort_keys=True)),
      "version": roar_jax.__version__, "mode": mode})


def remove_tree(p: PathLike):
  path(p).rmtree(missing_ok=True)


def glob_names(folder: PathLike, suffix: str) -> list[str]:
  """Names in `folder` ending with `suffix`, sorted."""
  return [n for n in listdir(folder) if n.endswith(suffix)]


def iter_json(folder: PathLike, suffix: str = ".json"
              ) -> Iterable[tuple[str, Any]]:
  """(path, parsed JSON) of every file in `folder` ending with `suffix`."""
  for name in glob_names(folder, suffix):
    p = join(folder, name)
    yield p, read_json(p)
