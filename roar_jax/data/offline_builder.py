"""What the offline TFDS builders share: the base class and prepare-once.

A prepared dataset lives under `<data_dir>/<builder>/<config name>/<version>/`.
The config name is a readable stem plus a hash of the input's CONTENT: for a
file (an archive), its bytes; for a directory, its resolved path and listing
(every file's relative name, size and modification time). The same input is
prepared once and found again, and a copy of an archive at another path or
with a new modification time (a fresh download, a copy onto another machine)
is the same dataset; a folder that gained, lost or changed a file is prepared
again under a new name (the old copy stays, unused).
"""

import contextlib
import hashlib
import json
import logging as pylogging
import os
import re
import sys
import time
from typing import Any

import tensorflow_datasets as tfds
from absl import logging

from roar_jax.data.errors import DataError, first_line

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
# TFDS keys are 128-bit; with shuffling disabled the writer sorts by key and
# buckets by the key's leading bits, so spreading the keys over the whole range
# keeps both the order and the memory of the 1000 on-disk buckets bounded.
_KEY_RANGE = 2**128


def order_key(index: int, num_examples: int) -> int:
  """The TFDS key that stores example `index` of `num_examples` in order."""
  return index * (_KEY_RANGE // max(num_examples, 1))


def input_fingerprint(*parts: Any) -> str:
  """Short hash of the inputs that define a prepared dataset."""
  return hashlib.sha1(json.dumps(parts, sort_keys=True,
                                 default=str).encode()).hexdigest()[:12]


def content_fingerprint(path: str) -> str:
  """Hash of a file's bytes, or of a directory tree's listing.

  A file is hashed by its content, so that a copy (another path, another
  modification time) keeps the fingerprints of everything made from it; a
  directory, whose files may be many, by its resolved path and every file's
  relative name, size and modification time. Hidden files (.DS_Store and the
  like) are left out: they change without the data changing.

  Raises:
    DataError: the path does not exist or cannot be read.
  """
  real = os.path.realpath(os.path.expanduser(path))
  try:
    if not os.path.isdir(real):
      return _file_digest(real)
    digest = hashlib.sha1(real.encode())
    for root, dirs, files in os.walk(real, onerror=_raise):
      dirs[:] = sorted(d for d in dirs if not d.startswith("."))
      for name in sorted(f for f in files if not f.startswith(".")):
        full = os.path.join(root, name)
        st = os.stat(full)
        rel = os.path.relpath(full, real)
        digest.update(f"\n{rel}\0{st.st_size}\0{st.st_mtime_ns}".encode())
  except OSError as e:
    raise DataError(f"{e.filename or path}: cannot list the dataset input "
                    f"({e.strerror or first_line(e)})") from None
  return digest.hexdigest()[:12]


# A file up to this size is hashed whole (CIFAR-10's JPEG archive, 20 MB, in
# about 30 ms); a larger one by its size and _BLOCKS evenly spaced blocks, so
# an ImageNet-sized archive costs a second, not minutes. A re-encoded or
# truncated archive changes its size or its bytes everywhere.
_WHOLE_BYTES = 256 << 20
_BLOCKS, _BLOCK_BYTES = 64, 1 << 20


def _file_digest(path: str) -> str:
  """Short sha1 of a file's size and bytes (sampled blocks past 256 MiB)."""
  size = os.stat(path).st_size
  digest = hashlib.sha1(f"file\0{size}".encode())
  with open(path, "rb") as f:
    if size <= _WHOLE_BYTES:
      for block in iter(lambda: f.read(_BLOCK_BYTES), b""):
        digest.update(block)
    else:
      step = (size - _BLOCK_BYTES) // (_BLOCKS - 1)
      for i in range(_BLOCKS):
        f.seek(i * step)
        digest.update(f.read(_BLOCK_BYTES))
  return digest.hexdigest()[:12]


def _raise(error: OSError):
  raise error


def config_name(path: str, *extra: Any) -> str:
  """`<stem>_<hash of the content and extra>` of a local input."""
  stem = os.path.basename(os.path.normpath(path)).lower()
  for suffix in TAR_SUFFIXES:
    stem = stem.removesuffix(suffix)
  stem = re.sub(r"[^a-z0-9]+", "_", stem).strip("_")[:40] or "data"
  return f"{stem}_{input_fingerprint(content_fingerprint(path), *extra)}"


def is_tar(path: str) -> bool:
  return os.path.isfile(path) and path.lower().endswith(TAR_SUFFIXES)


class OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder that reads only local input and orders examples by key."""

  # TFDS looks for a checksums file next to a builder's code, and on the way
  # needs the `importlib_resources` backport that it does not install; these
  # builders download nothing, so there is nothing to look up.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return None

  # TFDS prints a banner of download sizes ("Downloading and preparing
  # dataset Unknown size ...") and one when done, to stdout; nothing is
  # downloaded here, and `prepare` logs one line of its own instead.
  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass


def prepared_dir(builder_cls, config, data_dir: str) -> str:
  return os.path.join(data_dir, builder_cls.name, config.name,
                      str(builder_cls.VERSION))


def _is_prepared(prepared: str) -> bool:
  return os.path.exists(os.path.join(prepared, "dataset_info.json"))


class _DropCustomConfigNotice(pylogging.Filter):
  """Drops TFDS's warning that a builder runs under a config it does not
  list: every offline builder does, by design (its config names the input)."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    return not str(record.msg).startswith("Using custom data configuration")


@contextlib.contextmanager
def _without_custom_config_notice():
  """While a builder is made: TFDS logs the notice through absl's logger."""
  logger, notice = pylogging.getLogger("absl"), _DropCustomConfigNotice()
  logger.addFilter(notice)
  try:
    yield
  finally:
    logger.removeFilter(notice)


def prepare(builder_cls, config, data_dir: str | None) -> str:
  """Prepares (once) and returns the directory of the prepared dataset.

  Raises:
    DataError: the input is unusable (named by the builder), or the prepared
      copy cannot be written under data_dir.
  """
  data_dir = os.path.expanduser(data_dir or tfds.core.constants.DATA_DIR)
  prepared = prepared_dir(builder_cls, config, data_dir)
  if _is_prepared(prepared):
    return prepared
  if not sys.stderr.isatty():
    # TFDS draws its bars whatever the output; in a log they are lines of
    # carriage returns. (tqdm's own `disable=None` rule, applied to TFDS.)
    tfds.disable_progress_bar()
  with _without_custom_config_notice():
    builder = builder_cls(data_dir=data_dir, config=config)
  logging.info("preparing %s from %s (once; stored in %s)", config.name,
               getattr(config, "path", None) or builder_cls.name, prepared)
  start = time.monotonic()
  try:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        try_download_gcs=False,
        compute_stats=tfds.download.ComputeStatsMode.SKIP))
  except OSError as e:
    # TFDS writes into a temporary directory and renames it: when several
    # processes prepare the same input at once, the later renames fail after
    # the first one succeeded, and the dataset is there to read.
    if _is_prepared(prepared):
      return prepared
    raise DataError(f"{data_dir}: cannot write the prepared dataset "
                    f"{prepared} ({first_line(e)})") from None
  logging.info("prepared %s in %.1f s", config.name, time.monotonic() - start)
  return os.fspath(builder.data_dir)
