"""`DataError`: a dataset the user pointed at cannot be used.

Raised for every user-caused data failure (a missing, empty or mislaid-out
folder, a corrupt image, archive or IDX file, a dataset without a test split
or with one class, a TFDS dataset that would need the network) with ONE line
that names the file. It derives from `ValueError`, so the command line prints
it as one line like every other user error.
"""

import re


class DataError(ValueError):
  """A dataset cannot be used; the message is one line naming the file."""


def first_line(error: BaseException) -> str:
  """The first line of an exception's text, without TensorFlow's op noise.

  TensorFlow wraps messages as `{{function_node ...}} text [Op:Name]`; libraries
  sometimes end theirs with a long report on further lines.
  """
  text = getattr(error, "message", None) or str(error) or type(error).__name__
  text = re.sub(r"\{\{[^}]*\}\}\s*", "", text)
  text = re.sub(r"\s*\[Op:[^\]]*\]", "", text)
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return lines[0] if lines else type(error).__name__
