"""Progress bars and log records in a terminal: never on one line."""

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios

from conftest import REPO

# An absl record: severity letter, MMDD, time.
_RECORD = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d")
_BAR = re.compile(r"\d+%\|")


def _run_in_terminal(args, timeout=300) -> str:
  """Runs a command with stdout and stderr on a pseudo-terminal."""
  main, child = pty.openpty()
  # A new terminal is 0 x 0: give it a width, as a real one has.
  fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
  proc = subprocess.Popen(args, stdout=child, stderr=child, cwd=REPO,
                          env={**os.environ, "COLUMNS": "120"})
  os.close(child)
  chunks = []
  while True:
    ready, _, _ = select.select([main], [], [], timeout)
    if not ready:
      proc.kill()
      raise TimeoutError("no output for %d s" % timeout)
    try:
      data = os.read(main, 65536)
    except OSError:  # The child closed the terminal.
      break
    if not data:
      break
    chunks.append(data)
  proc.wait(timeout=60)
  os.close(main)
  return b"".join(chunks).decode(errors="replace")


def test_bars_and_records_never_share_a_visible_line(tmp_path):
  out = _run_in_terminal(
      [sys.executable, "-m", "roar_jax.main", "--config=configs/toy.py",
       f"--workdir={tmp_path}", "--mode=train", "--config.train.num_steps=60",
       "--config.train.log_every=10"])
  assert "test accuracy:" in out, out[-2000:]
  lines = out.replace("\r\n", "\n").split("\n")
  records = [l for l in lines if _RECORD.search(l)]
  assert any("train step 60/60" in l or "step 60/60" in l for l in records)
  bars = [l for l in lines if _BAR.search(l)]
  assert bars, "the terminal shows a progress bar"
  for line in lines:
    visible = line.split("\r")[-1]  # What a terminal keeps after redraws.
    assert not (_RECORD.search(visible) and _BAR.search(visible)), line
