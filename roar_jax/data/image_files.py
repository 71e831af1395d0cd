"""Encoded image files: which files are images, their headers, full decoding.

Used while preparing a dataset from local files: the header gives an image's
size and mode without decoding it (fast listing), `check_decodable` decodes
every image fully once with TensorFlow (the decoder that reads the prepared
dataset later), so that a truncated or corrupt file is named while preparing
instead of failing in the middle of a training run.
"""

import contextlib
import io
import os
import struct
import sys
import tempfile
from typing import Sequence

import tensorflow as tf

from roar_jax.data.errors import DataError, first_line

# Stored as they are (no re-encoding, so no quality loss).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Other image formats PIL reads: converted to RGB PNG.
CONVERTED_EXTENSIONS = (".bmp", ".gif", ".tif", ".tiff", ".webp")
# Files that are obviously not images (documentation, metadata, checksums):
# skipped, as are hidden files (.DS_Store, ._*) and files without extension
# (README, LICENSE). Any other file in the layout is refused, by name.
SKIPPED_EXTENSIONS = (".txt", ".md", ".rst", ".json", ".csv", ".tsv", ".xml",
                      ".yaml", ".yml", ".html", ".htm", ".pdf", ".log", ".ini",
                      ".db", ".md5", ".sha1", ".sha256", ".py", ".sh")

# Bytes read from each file of a directory to find its size and mode (JPEG
# headers can follow tens of kilobytes of EXIF data).
HEADER_BYTES = 1 << 17
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (they hold the size); C4, C8 and CC are not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_MODES = {1: "L", 3: "RGB", 4: "CMYK"}
# Images decoded per call of the batched decoder.
CHECK_CHUNK = 256


def is_hidden(name: str) -> bool:
  """Whether a file or one of its folders is hidden (.DS_Store, macOS's `._*`
  resource forks, .ipynb_checkpoints/, ...)."""
  return any(part.startswith(".") and part not in (".", "..")
             for part in name.split("/"))


def is_image_name(name: str) -> bool:
  """Whether a file is read as an image (hidden ones never are)."""
  return (not is_hidden(name) and
          name.lower().endswith(IMAGE_EXTENSIONS + CONVERTED_EXTENSIONS))


def is_skipped_name(name: str) -> bool:
  """Whether a file is obviously not an image (skipped without a word)."""
  ext = os.path.splitext(os.path.basename(name))[1]
  return is_hidden(name) or not ext or ext.lower() in SKIPPED_EXTENSIONS


def parse_header(data: bytes) -> tuple[tuple[int, int], str, str] | None:
  """(width, height), mode and format read from a PNG or JPEG header.

  About ten times faster than opening the image with PIL, which matters for
  archives of many small images; None when the bytes are neither (PIL then
  decides).
  """
  if data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR":
    width, height = struct.unpack(">II", data[16:24])
    rgb8 = data[24] == 8 and data[25] == 2  # 8-bit truecolor, no alpha.
    return (width, height), ("RGB" if rgb8 else "other"), "png"
  if data[:2] != b"\xff\xd8":
    return None
  i, n = 2, len(data)
  while i + 4 <= n:
    if data[i] != 0xFF:
      return None
    marker = data[i + 1]
    if marker == 0xFF:  # Fill byte.
      i += 1
      continue
    if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # No length field.
      i += 2
      continue
    length = (data[i + 2] << 8) | data[i + 3]
    if marker in _JPEG_SOF:
      if i + 10 > n:
        return None
      precision = data[i + 4]
      height, width = struct.unpack(">HH", data[i + 5:i + 9])
      mode = _JPEG_MODES.get(data[i + 9], "other") if precision == 8 else (
          "other")
      return (width, height), mode, "jpeg"
    i += 2 + length
  return None


def image_header(data: bytes, where: str) -> tuple[tuple[int, int], str, str]:
  """(width, height), PIL mode and format of an encoded image (no decoding).

  Raises:
    DataError: naming `where`, when the bytes are not an image.
  """
  parsed = parse_header(data)
  if parsed is not None and parsed[0][0] > 0 and parsed[0][1] > 0:
    return parsed
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(io.BytesIO(data)) as img:
      return img.size, img.mode, (img.format or "").lower()
  except Exception as e:  # PIL raises several types for bad files.
    raise DataError(f"{where}: not a readable image ({first_line(e)})"
                    ) from None


def rgb_png(data: bytes, where: str) -> bytes:
  """The image re-encoded as an RGB PNG (for gray, CMYK, GIF, ... inputs)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(io.BytesIO(data)) as img:
      out = io.BytesIO()
      img.convert("RGB").save(out, format="png")
      return out.getvalue()
  except Exception as e:  # PIL raises several types for bad files.
    raise DataError(f"{where}: cannot decode the image ({first_line(e)})"
                    ) from None


@contextlib.contextmanager
def _native_stderr_captured():
  """Captures what native code writes to file descriptor 2 in the block.

  libjpeg prints its own complaint about a bad file ("Improper call to JPEG
  library in state 201", "Premature end of JPEG file") straight to the
  process's stderr, past TensorFlow's and Python's logging. Yields a list
  that holds the captured bytes once the block ends.
  """
  sys.stderr.flush()
  captured = []
  try:
    saved = os.dup(2)
  except OSError:  # No stderr (closed in a daemon): nothing to keep clean.
    yield captured
    captured.append(b"")
    return
  with tempfile.TemporaryFile() as sink:
    os.dup2(sink.fileno(), 2)
    try:
      yield captured
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      sink.seek(0)
      captured.append(sink.read())


def _quiet_decode(decode, data) -> Exception | None:
  """Runs a TensorFlow decode; returns its error (None if it decoded).

  The decoder's stderr output on a bad image is dropped (the caller names
  the file in one line); on success whatever was written is passed on, so
  nothing but a failing decode's own complaint is hidden.
  """
  with _native_stderr_captured() as captured:
    try:
      decode(data)
      error = None
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
      error = e
  if error is None and captured[0]:
    os.write(2, captured[0])
  return error


def _decode_shape(data: tf.Tensor) -> tf.Tensor:
  return tf.shape(tf.io.decode_image(data, channels=3,
                                     expand_animations=False))


@tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
def _decode_shapes(batch: tf.Tensor) -> tf.Tensor:
  return tf.map_fn(_decode_shape, batch, fn_output_signature=tf.int32)


def check_decodable(images: Sequence[tuple[str, bytes]]) -> None:
  """Decodes every image fully; names the first one that does not decode.

  Decodes in one batched call (a bad image fails the whole batch, then the
  images are decoded one at a time to find it): about 50 us per small image.

  Args:
    images: (where, encoded bytes) pairs; `where` names the file in errors.

  Raises:
    DataError: `<where>: corrupt or truncated image (<decoder's reason>)`.
  """
  for start in range(0, len(images), CHECK_CHUNK):
    chunk = images[start:start + CHECK_CHUNK]
    if _quiet_decode(_decode_shapes,
                     tf.constant([data for _, data in chunk])) is None:
      continue
    for where, data in chunk:
      error = _quiet_decode(_decode_shape, tf.constant(data))
      if error is not None:
        raise DataError(f"{where}: corrupt or truncated image "
                        f"({first_line(error)})")
