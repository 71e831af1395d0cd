"""The level contract: how a stored ranking turns into removed positions.

A ranking is stored per image as levels in [0, NUM_LEVELS): level q holds the
positions whose rank lies in [q%, (q+1)%) of all positions (level 0 the most
important). A threshold t covers k = round(100 t) levels, so thresholds are
whole percents; ROAR removes the k top levels, KAR keeps them and removes the
rest. The rounding is half up on the threshold as written (0.125 is 13%,
0.145 is 15%), and it is the only one: removal, file names, fingerprints and
the config's collision check all call `threshold_level`, so a name never
says another percent than the pixels removed. Every stage that ranks,
degrades, names files or validates a config reads these definitions from
here. Pure numpy: saliency may import it.
"""

import decimal

import numpy as np

NUM_LEVELS = 100
MODES = ("roar", "kar")
FILLS = ("channel_mean", "noisy_linear")
# The fill whose files carry no fill in their names: a grid of this fill
# alone keeps the names it had before the fill became a grid axis.
UNNAMED_FILL = "channel_mean"


def threshold_level(threshold: float) -> int:
  """k = round(100 t): the number of levels a threshold t covers.

  Args:
    threshold: fraction t in [0, 1].

  Returns:
    k in [0, 100]; ROAR removes the levels below k.
  """
  try:
    t = float(threshold)
  except (TypeError, ValueError):
    raise ValueError(f"threshold={threshold!r} must be a number in [0, 1]"
                     ) from None
  if not 0.0 <= t <= 1.0:  # Also rejects NaN.
    raise ValueError(f"threshold={threshold!r} must lie in [0, 1]")
  # Half up on the decimal the user wrote (repr gives the shortest decimal
  # that reads back as t): 0.125 -> 13 and 0.145 -> 15, as a person rounds,
  # where 100 * 0.145 in binary is 14.4999... and Python's round() would
  # round half to even (0.125 -> 12).
  percent = decimal.Decimal(repr(t)) * NUM_LEVELS
  return int(percent.quantize(decimal.Decimal(1), decimal.ROUND_HALF_UP))


def percent_name(threshold: float) -> str:
  """The threshold as file names spell it: 't013' for 0.125."""
  return f"t{threshold_level(threshold):03d}"


def check_mode(mode: str) -> str:
  """`mode`, if it is 'roar' or 'kar'; else a ValueError naming it."""
  if mode not in MODES:
    raise ValueError(f"mode={mode!r} must be one of {MODES}")
  return mode


def check_fill(fill: str) -> str:
  """`fill`, if it is a known fill; else a ValueError naming it."""
  if fill not in FILLS:
    raise ValueError(f"fill={fill!r} must be one of {FILLS}")
  return fill


def fills_of(value) -> tuple[str, ...]:
  """`config.roar.fill` as a tuple: one fill ('noisy_linear') or several
  (('channel_mean', 'noisy_linear'): the fill is then a grid axis)."""
  if isinstance(value, str):
    return (value,)
  try:
    return tuple(value)
  except TypeError:
    raise ValueError(f"fill={value!r} must be a fill name or a tuple of "
                     f"them, from {FILLS}") from None


def fill_suffix(fill: str) -> str | None:
  """The part of a file name that names the fill (None for UNNAMED_FILL)."""
  return None if fill == UNNAMED_FILL else fill


def removal_mask(levels: np.ndarray, *, threshold: float,
                 mode: str) -> np.ndarray:
  """Which positions a threshold removes.

  Args:
    levels: integer array of quantized ranks in [0, 100), any shape.
    threshold: fraction t in [0, 1].
    mode: 'roar' (remove the top-t fraction) or 'kar' (keep it, remove the
      rest).

  Returns:
    bool array shaped like `levels`, True where the value is removed.
  """
  k = threshold_level(threshold)
  check_mode(mode)
  levels = np.asarray(levels)
  top = levels < k
  return top if mode == "roar" else ~top
