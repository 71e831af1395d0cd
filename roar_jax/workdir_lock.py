"""One run per workdir: the lock `W/lock.json`, which `main.run` holds
while a mode runs (every mode but `report`)."""

import json
import os
import socket
import time
from typing import Any, Mapping

from roar_jax import workdir as workdir_lib


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class Lock:
  """One run per workdir: `W/lock.json` holds the host and pid of its owner.

  A lock left by a dead process of this host is taken over. On an object
  store (no exclusive create) the lock is written, then read back: the last
  writer wins and the other stops.
  """

  def __init__(self, workdir: workdir_lib.Workdir):
    self.file = workdir.lock_file
    self.held = False

  def _owner(self) -> dict[str, Any] | None:
    try:
      return workdir_lib.read_json(self.file, missing_ok=True)
    except workdir_lib.WorkdirError:
      return {}  # Half-written by a process that died: stale.

  def _create(self, record: Mapping[str, Any]) -> bool:
    data = json.dumps(record, sort_keys=True).encode()
    if workdir_lib.is_remote(self.file):
      if workdir_lib.exists(self.file):
        return False
      workdir_lib.write_bytes(self.file, data)
      return workdir_lib.read_json(self.file, missing_ok=True) == dict(record)
    try:
      workdir_lib.makedirs(os.path.dirname(self.file))
      fd = os.open(self.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
      return False
    except OSError as e:
      raise workdir_lib.WorkdirError(f"cannot write {self.file}: {workdir_lib.os_reason(e)}") from e
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    return True

  def acquire(self):
    """Takes the lock, or raises workdir_lib.WorkdirError naming its owner."""
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
      if self._create(me):
        self.held = True
        return
      owner = self._owner()
      if owner is None:
        continue  # Released meanwhile.
      stale = (not owner or (owner.get("host") == me["host"]
                             and not _pid_alive(int(owner.get("pid", 0)))))
      if not stale:
        raise workdir_lib.WorkdirError(
            f"{os.path.dirname(self.file) or '.'} is in use by process "
            f"{owner.get('pid')} on {owner.get('host')} (since "
            f"{owner.get('since')}): wait for it, or use another --workdir; "
            f"if no run uses it (that process is another program), delete "
            f"{self.file}")
      workdir_lib.path(self.file).unlink(missing_ok=True)
    raise workdir_lib.WorkdirError(f"could not take the lock {self.file}")

  def release(self):
    if self.held:
      workdir_lib.path(self.file).unlink(missing_ok=True)
      self.held = False

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()
