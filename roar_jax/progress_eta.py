"""Progress a user can read: done/total and time left, on a terminal or in a log.

`Eta` is the arithmetic alone (a clock is passed in, so tests use a fake
one): items done out of a total, time elapsed, and the time left as the mean
time per item finished in this process times the items left. Items finished
by an earlier run count as done but not in the mean; before the first item
of this process finishes there is no estimate ("ETA after the first unit").
Where several items run at once (Ray tasks, batched retrains), the elapsed
time over the items finished is the time per item at that parallelism, so the
estimate stays right.

`Bar` is the one place that decides how a loop shows progress: a tqdm bar
(with its ETA) on a terminal; without one (tqdm's `disable=None` turns bars
off when stderr is not a TTY: a log file, a batch job) an absl log line with
the same figures at most every `LOG_INTERVAL_S` seconds, and one when the
loop completes.

`timed` logs a step that has no count to show (writing a rank store): one
line when it starts, one with its time when it ends.
"""

import contextlib
import time
from typing import Callable

import tqdm
from absl import logging

# Without a terminal, ETA lines reach the log at most this often (seconds).
LOG_INTERVAL_S = 30.0


def format_duration(seconds: float) -> str:
  """'45 s', '21 min' or '2.5 h': whole seconds below 90 s, whole minutes
  below 90 min, hours with one decimal above."""
  seconds = max(float(seconds), 0.0)
  if seconds < 90:
    return f"{seconds:.0f} s"
  if seconds < 90 * 60:
    return f"{seconds / 60:.0f} min"
  return f"{seconds / 3600:.1f} h"


class Eta:
  """Done/total and the time left of a stage made of like items."""

  def __init__(self, total: int, *, done: int = 0,
               clock: Callable[[], float] = time.monotonic,
               started: float | None = None):
    """Starts timing now.

    Args:
      total: how many items the stage has (those done earlier included).
      done: items an earlier run finished: counted done, not timed.
      clock: seconds, monotonic (`time.monotonic`; a fake one in tests).
      started: when the stage began on `clock` (for the elapsed time, e.g.
        the start of `--mode=roar` before the units); default now.
    """
    self.total = int(total)
    self.done = int(done)
    self.finished_here = 0
    self._clock = clock
    self._timed_from = clock()
    self._started = self._timed_from if started is None else float(started)

  def update(self, n: int = 1):
    """Records that `n` more items finished in this process."""
    self.done += int(n)
    self.finished_here += int(n)

  def elapsed(self) -> float:
    """Seconds since the stage began."""
    return self._clock() - self._started

  def seconds_left(self) -> float | None:
    """Mean time per item finished here times the items left; None before
    the first item finished here."""
    if self.finished_here <= 0:
      return None
    per_item = (self._clock() - self._timed_from) / self.finished_here
    return per_item * max(self.total - self.done, 0)

  def describe(self, noun: str = "item") -> str:
    """'7/30 units done, 21 min elapsed, about 69 min left' (noun 'unit'),
    or '0/30 units done, ETA after the first unit'."""
    head = f"{self.done}/{self.total} {noun}s done"
    left = self.seconds_left()
    if left is None:
      return f"{head}, ETA after the first {noun}"
    return (f"{head}, {format_duration(self.elapsed())} elapsed, about "
            f"{format_duration(left)} left")


class Bar:
  """A progress bar on a terminal, throttled ETA log lines without one.

  Use as a context manager, or call `close`. `update(n, detail)` advances
  the count; `detail` (what is being worked on) goes to the bar's postfix or
  into the log line: '<desc>: <detail>, 2048/5000 images done, 1 min
  elapsed, about 2 min left'.
  """

  def __init__(self, total: int, desc: str, *, noun: str = "item",
               unit: str = "it", interval: float = LOG_INTERVAL_S,
               clock: Callable[[], float] = time.monotonic,
               log: Callable[..., None] = logging.info,
               disable: bool | None = None):
    """Opens the bar.

    Args:
      total: items in the loop.
      desc: the stage, as the bar and the log lines start.
      noun: an item's name in log lines ('image', 'probe').
      unit: the bar's unit ('img').
      interval: least seconds between two log lines.
      clock: seconds, monotonic.
      log: logs one line, as `logging.info(fmt, *args)`.
      disable: tqdm's: None draws a bar only on a terminal; True never
        (then log lines are written), False always.
    """
    self.desc, self.noun = desc, noun
    self.eta = Eta(total, clock=clock)
    self._bar = tqdm.tqdm(total=total, desc=desc, unit=unit, disable=disable)
    # tqdm decides (a TTY or not); without a bar, the log shows progress.
    self.logs = bool(self._bar.disable)
    self._interval = float(interval)
    self._clock, self._log = clock, log
    self._last_log = clock()

  @property
  def n(self) -> int:
    """Items done so far."""
    return self.eta.done

  def update(self, n: int = 1, detail: str = ""):
    """Advances by `n` items; logs a line if due (no terminal)."""
    self.eta.update(n)
    if not self.logs:
      if detail:
        self._bar.set_postfix_str(detail, refresh=False)
      self._bar.update(n)
      return
    now = self._clock()
    complete = self.eta.done >= self.eta.total
    if complete or now - self._last_log >= self._interval:
      self._last_log = now
      self._log("%s: %s%s", self.desc, f"{detail}, " if detail else "",
                self.eta.describe(self.noun))

  def close(self):
    self._bar.close()

  def __enter__(self) -> "Bar":
    return self

  def __exit__(self, *exc):
    self.close()


@contextlib.contextmanager
def timed(what: str, *, clock: Callable[[], float] = time.monotonic,
          log: Callable[..., None] = logging.info):
  """Logs '<what>...' now and '<what>: done in T s' when the block ends."""
  start = clock()
  log("%s...", what)
  yield
  log("%s: done in %.1f s", what, clock() - start)
