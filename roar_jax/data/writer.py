"""Materializes a Source (typically a DegradedSource) as a TFDS dataset.

The output directory is a TFDS dataset of TFRecord files that
`tfds.builder_from_directory(out_dir)` reads, with the features
  image: uint8 [H, W, C] (PNG, lossless), label: ClassLabel, index: int64.

Several JAX processes can write one dataset together: each writes its
contiguous slice of every split (`source.process_slice`) into its own shard
files, whose global numbers follow from the split's size alone, so no process
needs to talk to another. Shards are numbered in index order, and every shard
holds its examples in index order, so reading the files in order gives the
examples in index order, exactly like the source.

  <out_dir>/<name>-<split>.tfrecord-NNNNN-of-NNNNN   the data (TFDS names)
  <out_dir>/_writer/<split>-PPPPP-of-PPPPP.json      one per (split, process):
                                                     its shards, written last
  <out_dir>/dataset_info.json, features.json, ...    TFDS metadata (process 0)
  <out_dir>/COMPLETE.json                            the dataset is finished

Every file is written under a temporary name and renamed. A process whose
record exists skips that split on a rerun; a finished dataset (COMPLETE.json)
is skipped as a whole. Several processes: see `write_dataset`.
"""

import json
import os
import re
import time
from typing import Any, Sequence

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from roar_jax import workdir as workdir_lib
from roar_jax.data import source_protocol as source_lib
from roar_jax.data import sources as sources_lib

COMPLETE_FILE = "COMPLETE.json"
RECORDS_DIR = "_writer"
FILE_FORMAT = "tfrecord"
# Default shard size: this many bytes of decoded images per shard (PNG files
# come out smaller): ~440 ImageNet-sized 224x224 images, ~22k CIFAR images.
_SHARD_BYTES = 64 << 20


def dataset_name(name: str) -> str:
  """A TFDS-valid dataset name (`[a-z][a-z0-9_]*`) derived from any name."""
  out = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
  if not out or not out[0].isalpha():
    out = "d_" + out
  return out


def default_examples_per_shard(image_shape: Sequence[int]) -> int:
  """Examples per shard file so that a shard holds ~64 MiB of pixels."""
  return max(1, _SHARD_BYTES // int(np.prod(image_shape)))


def _shard_plan(num_examples: int, process_count: int,
                examples_per_shard: int) -> list[list[int]]:
  """Shard lengths of every process, in process (= index) order."""
  plan = []
  for p in range(process_count):
    start, stop = source_lib.process_slice(num_examples, p, process_count)
    full, rest = divmod(stop - start, examples_per_shard)
    plan.append([examples_per_shard] * full + ([rest] if rest else []))
  return plan


def _shard_file(name: str, split: str, shard: int, num_shards: int) -> str:
  return f"{name}-{split}.{FILE_FORMAT}-{shard:05d}-of-{num_shards:05d}"


def _record_path(out_dir: str, split: str, process_index: int,
                 process_count: int) -> str:
  return os.path.join(out_dir, RECORDS_DIR,
                      f"{split}-{process_index:05d}-of-{process_count:05d}"
                      ".json")


def is_complete(out_dir: str) -> bool:
  """Whether a dataset directory is finished (metadata and marker written)."""
  return tf.io.gfile.exists(os.path.join(out_dir, COMPLETE_FILE))


def _check_image_shape(shape) -> tuple[int, int, int]:
  shape = tuple(int(s) for s in shape)
  if len(shape) != 3 or shape[-1] not in (1, 3, 4) or min(shape) < 1:
    raise ValueError(f"source.info.image_shape={shape} must be (H, W, C) "
                     "with C in (1, 3, 4) to be stored as PNG")
  return shape


def _features(image_shape, num_classes: int, class_names
              ) -> tfds.features.FeaturesDict:
  if class_names:
    label = tfds.features.ClassLabel(names=list(class_names))
  else:
    label = tfds.features.ClassLabel(num_classes=int(num_classes))
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=tuple(image_shape), dtype=np.uint8,
                                   encoding_format="png"),
      "label": label,
      "index": tfds.features.Scalar(dtype=np.int64),
  })


def write_shards(source, out_dir: str, *, splits: Sequence[str] = ("train",
                                                                   "test"),
                 process_index: int = 0, process_count: int = 1,
                 examples_per_shard: int | None = None,
                 name: str | None = None) -> list[str]:
  """Writes this process's slice of every split into its shard files.

  Args:
    source: the Source to materialize.
    out_dir: the dataset directory.
    splits: splits to write.
    process_index: this process.
    process_count: number of processes writing the dataset.
    examples_per_shard: examples per shard file; default ~64 MiB of pixels.
      Every process must use the same value.
    name: dataset name in the file names; default from `source.info.name`.

  Returns:
    The per-process records written or found (one per split).
  """
  info = source.info
  image_shape = _check_image_shape(info.image_shape)
  name = dataset_name(name or info.name)
  if examples_per_shard is None:
    examples_per_shard = default_examples_per_shard(image_shape)
  if not isinstance(examples_per_shard, (int, np.integer)) or (
      examples_per_shard < 1):
    raise ValueError(f"examples_per_shard={examples_per_shard!r} must be a "
                     "positive int")
  features = _features(image_shape, info.num_classes, info.class_names)
  records = []
  for split in splits:
    if split not in info.num_examples:
      raise ValueError(f"split {split!r} not in dataset {info.name!r} "
                       f"(it has {sorted(info.num_examples)})")
    records.append(_write_split(
        source, features, out_dir, split=split, name=name,
        process_index=process_index, process_count=process_count,
        examples_per_shard=int(examples_per_shard)))
  return records


def _write_shard_files(it, features, out_dir: str, *, name, split,
                       first_shard, num_shards, lengths, start, stop,
                       source_name, process_index) -> list[dict[str, Any]]:
  """Writes this process's shard files from the example iterator `it`."""
  shards = []
  expected = start
  for s, length in enumerate(lengths):
    file_name = _shard_file(name, split, first_shard + s, num_shards)
    path = os.path.join(out_dir, file_name)
    tmp = f"{path}.tmp{os.getpid()}"
    with tf.io.TFRecordWriter(tmp) as w:
      for _ in range(length):
        try:
          png, label, index = next(it)
        except StopIteration:
          raise ValueError(
              f"source {source_name!r} yielded {expected - start} examples of "
              f"split {split!r} for process {process_index}; expected "
              f"{stop - start}") from None
        if index != expected:
          raise ValueError(
              f"source {source_name!r}, split {split!r}: example "
              f"{expected - start} of process {process_index} has index "
              f"{index}, expected {expected} (indices must be global "
              "positions in order)")
        w.write(features.serialize_example(
            {"image": png, "label": int(label), "index": int(index)}))
        expected += 1
    tf.io.gfile.rename(tmp, path, overwrite=True)
    shards.append({"file": file_name, "num_examples": length,
                   "num_bytes": int(tf.io.gfile.stat(path).length)})
  return shards


def _already_written(out_dir: str, record_path: str, identity) -> bool:
  """Whether this process's part of the split is written (and the same)."""
  if not tf.io.gfile.exists(record_path):
    return False
  record = workdir_lib.read_json(record_path)
  stale = {k: (record.get(k), v) for k, v in identity.items()
           if record.get(k) != v}
  if stale:
    raise ValueError(f"{out_dir} already holds a different dataset "
                     f"({record_path}: stored vs. now {stale}); use another "
                     "out_dir or remove it")
  logging.info("%s: split %s, process %d of %d already written.", out_dir,
               identity["split"], identity["process_index"],
               identity["process_count"])
  return True


def _write_split(source, features, out_dir: str, *, split: str, name: str,
                 process_index: int, process_count: int,
                 examples_per_shard: int) -> str:
  info = source.info
  num_examples = int(info.num_examples[split])
  if num_examples == 0:
    raise ValueError(f"split {split!r} of {info.name!r} is empty")
  start, stop = source_lib.process_slice(num_examples, process_index,
                                         process_count)
  plan = _shard_plan(num_examples, process_count, examples_per_shard)
  num_shards = sum(len(p) for p in plan)
  first_shard = sum(len(p) for p in plan[:process_index])
  lengths = plan[process_index]
  record_path = _record_path(out_dir, split, process_index, process_count)
  identity = {"name": name, "split": split, "num_examples": num_examples,
              "process_index": process_index, "process_count": process_count,
              "examples_per_shard": examples_per_shard,
              "image_shape": list(info.image_shape),
              "num_classes": int(info.num_classes),
              "class_names": (list(info.class_names) if info.class_names
                              else None)}
  if _already_written(out_dir, record_path, identity):
    return record_path

  tf.io.gfile.makedirs(out_dir)
  ds = source.load(split, process_index=process_index,
                   process_count=process_count)
  ds = ds.map(tf.autograph.experimental.do_not_convert(
      lambda ex: (tf.io.encode_png(ex["image"]), ex["label"], ex["index"])),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  # Batches amortize the iterator's per-element cost (the bulk of the time
  # for small images); the loop below takes them apart again.
  ds = ds.batch(256).prefetch(tf.data.AUTOTUNE)
  it = (example for batch in ds.as_numpy_iterator()
        for example in zip(*batch))
  t0 = time.time()
  shards = _write_shard_files(
      it, features, out_dir, name=name, split=split, first_shard=first_shard,
      num_shards=num_shards, lengths=lengths, start=start, stop=stop,
      source_name=info.name, process_index=process_index)
  if next(it, None) is not None:
    raise ValueError(f"source {info.name!r} yielded more than {stop - start} "
                     f"examples of split {split!r} for process "
                     f"{process_index}")
  elapsed = time.time() - t0
  rate = (stop - start) / max(elapsed, 1e-9)
  logging.info("%s: wrote split %s, process %d of %d: %d images in %.1f s "
               "(%.1f images/s), %d shard files.", out_dir, split,
               process_index, process_count, stop - start, elapsed, rate,
               len(shards))
  workdir_lib.write_json(record_path, {
      **identity, "start": start, "stop": stop, "first_shard": first_shard,
      "num_shards": num_shards, "shards": shards,
      "source_metadata": getattr(source, "metadata", None),
      "seconds": elapsed, "images_per_s": rate})
  return record_path


def _split_info(out_dir: str, split: str, records
                ) -> tuple[tfds.core.SplitInfo, list[dict[str, Any]]]:
  """A split's TFDS SplitInfo from its processes' records, checked whole."""
  if not records:
    raise ValueError(f"{out_dir}: split {split!r} was not written")
  counts = {r["process_count"] for r in records}
  if len(counts) != 1:
    raise ValueError(f"{out_dir}: split {split!r} was written with "
                     f"different process counts {sorted(counts)}")
  count = counts.pop()
  missing = sorted(set(range(count)) - {r["process_index"] for r in records})
  if missing:
    raise ValueError(f"{out_dir}: processes {missing} of {count} have not "
                     f"finished split {split!r}")
  records = sorted(records, key=lambda r: r["process_index"])
  shard_lengths, num_bytes = [], 0
  for r in records:
    for shard in r["shards"]:
      if not tf.io.gfile.exists(os.path.join(out_dir, shard["file"])):
        raise ValueError(f"{out_dir}: shard file {shard['file']} is missing")
      shard_lengths.append(shard["num_examples"])
      num_bytes += shard["num_bytes"]
  if sum(shard_lengths) != records[0]["num_examples"]:
    raise ValueError(f"{out_dir}: split {split!r} holds "
                     f"{sum(shard_lengths)} examples, expected "
                     f"{records[0]['num_examples']}")
  return tfds.core.SplitInfo(name=split, shard_lengths=shard_lengths,
                             num_bytes=num_bytes), records


def write_metadata(out_dir: str, *, splits: Sequence[str] | None = None
                   ) -> str:
  """Writes the TFDS metadata and the completion marker (process 0, once).

  Call after every process has finished `write_shards` / `write_dataset`
  (the caller provides the barrier). Checks that every process's record and
  every shard file of every split exist.

  Args:
    out_dir: the dataset directory.
    splits: splits that must be present; default all that were written.

  Returns:
    out_dir.
  """
  if is_complete(out_dir):
    return out_dir
  records_dir = os.path.join(out_dir, RECORDS_DIR)
  by_split: dict[str, list[dict[str, Any]]] = {}
  if tf.io.gfile.isdir(records_dir):
    for file_name in sorted(tf.io.gfile.listdir(records_dir)):
      if file_name.endswith(".json"):
        record = workdir_lib.read_json(os.path.join(records_dir, file_name))
        by_split.setdefault(record["split"], []).append(record)
  wanted = list(splits) if splits is not None else sorted(by_split)
  if not wanted:
    raise ValueError(f"{out_dir}: nothing written yet (no records in "
                     f"{records_dir})")
  split_infos, first = [], None
  for split in wanted:
    info, records = _split_info(out_dir, split, by_split.get(split))
    first = first or records[0]
    for key in ("name", "image_shape", "num_classes", "class_names"):
      for r in records:
        if r[key] != first[key]:
          raise ValueError(f"{out_dir}: split {split!r} disagrees on {key}: "
                           f"{r[key]!r} vs {first[key]!r}")
    split_infos.append(info)

  features = _features(first["image_shape"], first["num_classes"],
                       first["class_names"])
  source_metadata = first.get("source_metadata")
  description = "Degraded by roar_jax." if source_metadata else (
      "Written by roar_jax.")
  if source_metadata:
    description += " " + json.dumps(source_metadata, sort_keys=True)
  tfds.folder_dataset.write_metadata(
      data_dir=out_dir, features=features, split_infos=split_infos,
      filename_template=None, check_data=False, description=description)
  workdir_lib.write_json(os.path.join(out_dir, COMPLETE_FILE), {
      "name": first["name"],
      "num_examples": {s.name: s.num_examples for s in split_infos},
      "source_metadata": source_metadata})
  logging.info("%s: dataset complete (%s).", out_dir,
               {s.name: s.num_examples for s in split_infos})
  return out_dir


def write_dataset(source, out_dir: str, *,
                  splits: Sequence[str] = ("train", "test"),
                  process_index: int = 0, process_count: int = 1,
                  examples_per_shard: int | None = None,
                  name: str | None = None) -> str:
  """Materializes `source` as a TFDS dataset in `out_dir`.

  Streams: memory does not depend on the dataset's size. A finished dataset
  is skipped. With one process this writes everything; with several, each
  process writes its shards and process 0 then calls `write_metadata` after a
  barrier.

  Args:
    source: the Source to write (e.g. a `degraded.DegradedSource`).
    out_dir: the dataset directory (e.g. <workdir>/datasets/<name>).
    splits: splits to write.
    process_index: this process.
    process_count: number of processes writing the dataset.
    examples_per_shard: examples per shard file; default ~64 MiB of pixels.
    name: dataset name in the file names; default from `source.info.name`.

  Returns:
    out_dir.
  """
  out_dir = os.fspath(out_dir)
  if is_complete(out_dir):
    logging.info("%s: already complete, skipped.", out_dir)
    return out_dir
  write_shards(source, out_dir, splits=splits, process_index=process_index,
               process_count=process_count,
               examples_per_shard=examples_per_shard, name=name)
  if process_count == 1:
    write_metadata(out_dir, splits=splits)
  return out_dir


def read_dataset(out_dir: str, **kwargs) -> "sources_lib.DirectorySource":
  """A finished written dataset as a Source (in index order, like the source).

  Args:
    out_dir: a directory written by `write_dataset` / `write_metadata`.
    **kwargs: passed to `sources.DirectorySource` (name, split_map, caps).

  Returns:
    A Source over `tfds.builder_from_directory(out_dir)`.
  """
  out_dir = os.fspath(out_dir)
  if not is_complete(out_dir):
    raise ValueError(f"{out_dir} is not a finished dataset (no "
                     f"{COMPLETE_FILE}); write it with write_dataset")
  return sources_lib.DirectorySource(out_dir, **kwargs)
