"""W/report/ built whole, then swapped in.

A stage that writes report files (the report, the metrics stage, the sanity
checks) writes them into a staging folder `W/report.tmp-<host>-<pid>/`, which
starts as a copy of the files of `W/report/` that other stages own (the
saliency grid, the sanity checks, ...). Only when every file is written does
the staging folder replace `W/report/`, so an interrupted build (an
exception, SIGTERM, kill -9) leaves the old report as it was, and a reader
never finds a new results.csv beside an old leakage.csv.

The swap is a journal, correct on an object store too, where a rename is a
copy and a delete:

1. the staging folder's manifest (`.complete`, the list of its files) is
   written last, once every file is there;
2. locally, `report/` is renamed to `report.old-<host>-<pid>/`, the staging
   folder to `report/`, and the old one is deleted; on an object store each
   listed file is copied over `report/` and files not listed are deleted;
3. the staging folder is deleted.

summary.md and index.html belong to the grid's report once there is one; in
a folder without it, the metrics stage and the sanity checks write them
(`with_pages`).

A staging folder with a manifest is finished: whichever run next opens a
staging folder (`recover`) completes its swap. One without a manifest was
abandoned half-built: it is deleted once its process (on this host) has
ended.
"""

import contextlib
import os
import socket
from typing import Callable, Iterator

from roar_jax import workdir as workdir_lib

MANIFEST = ".complete"
PAGES = ("summary.md", "index.html")  # Every stage's readable pages.
_STAGING = "report.tmp-"
_OLD = "report.old-"

Owns = Callable[[str], bool]


def owns_report_build(name: str) -> bool:
  """The report build (`--mode=report`, the end of `--mode=roar`) rewrites
  every file but the saliency grid and the sanity checks."""
  return (name not in ("saliency.png", "saliency.pdf")
          and not name.startswith("sanity"))


def owns_metrics(name: str) -> bool:
  """The metrics stage's files."""
  return name in ("metrics.csv", "metrics.png", "metrics.pdf", "leakage.csv",
                  "agreement.csv")


def owns_sanity(name: str) -> bool:
  """The sanity checks' files."""
  return name.startswith("sanity")


def has_grid_report(wd: workdir_lib.Workdir) -> bool:
  """Whether the report folder holds the grid's report (its results.csv,
  which no other stage writes)."""
  return workdir_lib.exists(wd.report("results.csv"))


def with_pages(owns: Owns, pages: bool = True) -> Owns:
  """`owns` and, when `pages`, summary.md and index.html: the metrics stage
  and the sanity checks write the pages of a folder without the grid's
  report, and leave those of one with it alone."""
  return lambda name: owns(name) or (pages and name in PAGES)


class StagedWorkdir(workdir_lib.Workdir):
  """A Workdir whose report folder is the staging folder; every other path
  is the workdir's own."""

  def __init__(self, root: workdir_lib.PathLike, staging: str):
    super().__init__(root)
    self.staging = staging

  def report(self, name: str = "") -> str:
    return workdir_lib.join(self.staging, name) if name else self.staging


def _suffix() -> str:
  return f"{socket.gethostname()}-{os.getpid()}"


def _abandoned(name: str) -> bool:
  """Whether a staging folder's process (named in it) has ended on this
  host. `--mode=report` holds no lock and may run beside a grid, so a live
  process's folder is left alone; folders of other hosts (processes of a
  multi-host run) are left to their own runs."""
  host, _, pid = name[len(_STAGING):].rpartition("-")
  if host != socket.gethostname() or not pid.isdigit():
    return False
  if int(pid) == os.getpid():
    return True  # Ours, from a build that raised before its cleanup.
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return True
  except PermissionError:
    return False  # Alive, another user's.
  return False


def _publish(wd: workdir_lib.Workdir, staging: str):
  """Step 2 and 3 of the swap (repeatable: a rerun finishes it)."""
  report = wd.report()
  names = workdir_lib.read_json(workdir_lib.join(staging, MANIFEST))
  if workdir_lib.is_remote(report):
    for name in names:
      workdir_lib.write_bytes(workdir_lib.join(report, name),
                              workdir_lib.read_bytes(
                                  workdir_lib.join(staging, name)))
    for name in set(workdir_lib.listdir(report)) - set(names):
      workdir_lib.path(workdir_lib.join(report, name)).unlink(missing_ok=True)
    workdir_lib.remove_tree(staging)
    return
  old = wd.sub(_OLD + os.path.basename(staging)[len(_STAGING):])
  if os.path.exists(report):
    os.rename(report, old)
  os.rename(staging, report)
  workdir_lib.remove_tree(old)
  os.remove(os.path.join(report, MANIFEST))


def recover(wd: workdir_lib.Workdir):
  """Finishes a swap an earlier run began, deletes abandoned staging
  folders and leftovers of a swap."""
  for name in workdir_lib.listdir(wd.root):
    folder = wd.sub(name)
    if name.startswith(_STAGING):
      if workdir_lib.exists(workdir_lib.join(folder, MANIFEST)):
        _publish(wd, folder)
      elif _abandoned(name):
        workdir_lib.remove_tree(folder)
  # After the swaps above: an old report whose successor is in place.
  if workdir_lib.exists(wd.report()):
    for name in workdir_lib.listdir(wd.root):
      if name.startswith(_OLD):
        workdir_lib.remove_tree(wd.sub(name))


@contextlib.contextmanager
def staged(wd: workdir_lib.Workdir, owns: Owns, *, enabled: bool = True
           ) -> Iterator[workdir_lib.Workdir]:
  """A Workdir whose `report()` is a staging folder, swapped in at the end.

  Args:
    wd: the experiment workdir.
    owns: which file names of `W/report/` the build (re)writes; the others
      are carried over into the new report unchanged.
    enabled: False yields `wd` itself (processes other than 0 write no
      report files).

  Yields:
    The Workdir to write the report files through.
  """
  if not enabled:
    yield wd
    return
  recover(wd)
  staging = wd.sub(_STAGING + _suffix())
  workdir_lib.remove_tree(staging)
  workdir_lib.makedirs(staging)
  for name in workdir_lib.listdir(wd.report()):
    if not owns(name) and name != MANIFEST:
      workdir_lib.write_bytes(
          workdir_lib.join(staging, name),
          workdir_lib.read_bytes(wd.report(name)))
  try:
    yield StagedWorkdir(wd.root, staging)
  except BaseException:
    workdir_lib.remove_tree(staging)
    raise
  workdir_lib.write_json(workdir_lib.join(staging, MANIFEST),
                         workdir_lib.listdir(staging))
  _publish(wd, staging)
