"""'Did you mean ...?': the known name closest to a misspelled one.

One helper for every place that refuses a name (a config field, an
estimator, a mode, a config's name), so that they suggest alike. Standard
library only: the saliency package and the config checks both import it.
"""

import difflib
from typing import Callable, Iterable, Optional


def closest(word, known: Iterable[str]) -> Optional[str]:
  """The known name most like `word`, or None.

  Args:
    word: the name given (anything; a non-string has no close name).
    known: the names that exist.

  Returns:
    The name difflib ranks first among those at least 60% alike (its
    default cutoff: 'gradiant' finds 'gradient', 'smoothgrad' finds nothing),
    or None.
  """
  if not isinstance(word, str):
    return None
  match = difflib.get_close_matches(word, list(known), n=1)
  return match[0] if match else None


def did_you_mean(word, known: Iterable[str], *,
                 show: Callable[[str], str] = repr) -> str:
  """"; did you mean <name>?" for the closest known name, else "".

  Args:
    word: the name given.
    known: the names that exist.
    show: how the suggestion is written (default: quoted, `repr`).

  Returns:
    The clause to append to an error message, or the empty string.
  """
  name = closest(word, known)
  return f"; did you mean {show(name)}?" if name is not None else ""
