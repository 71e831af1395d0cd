"""Provenance: what made each artifact of a workdir, and whether it still fits.

Every artifact records a fingerprint, a hash of exactly the config fields that
determine it and of its inputs' fingerprints, in a `provenance.json` beside it
(folders) or inside it (JSON records). Before any work a stage lists the
artifacts it will use (`Artifact`, with the provenance the current config
gives them) and calls `settle`: an artifact that exists under another
fingerprint would mean something else now, so the run stops in one line
naming the changed fields and the artifacts they affect, unless the user asks
to recompute (the stale artifacts are then moved aside, not deleted).
"""

import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Iterable, Mapping

from absl import logging

from roar_jax import workdir as workdir_lib

PROVENANCE_FILE = "provenance.json"



def fingerprint(fields: Mapping[str, Any],
                inputs: Mapping[str, str] | None = None) -> str:
  """A hash of the config fields that determine an artifact and of its
  inputs' fingerprints.

  Args:
    fields: flat {dotted config field: value}.
    inputs: {input name: fingerprint}.

  Returns:
    16 hex digits.
  """
  blob = json.dumps({"fields": fields, "inputs": dict(inputs or {})},
                    sort_keys=True, default=workdir_lib.json_default)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}; tuples become lists (as JSON has them)."""
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(flatten(v, key + "."))
    else:
      out[key] = list(v) if isinstance(v, tuple) else v
  return out


def provenance(fields: Mapping[str, Any],
               inputs: Mapping[str, str] | None = None) -> dict[str, Any]:
  """The record an artifact keeps: its fingerprint, fields and inputs."""
  return {"fingerprint": fingerprint(fields, inputs),
          "fields": as_json(fields), "inputs": dict(inputs or {})}


def as_json(fields: Mapping[str, Any]) -> dict[str, Any]:
  """`fields` as they read back from JSON (tuples become lists, ...)."""
  return json.loads(json.dumps(dict(fields), sort_keys=True,
                               default=workdir_lib.json_default))


def read_provenance(folder: workdir_lib.PathLike) -> dict[str, Any] | None:
  return workdir_lib.read_json(workdir_lib.join(folder, PROVENANCE_FILE), missing_ok=True)


def write_provenance(folder: workdir_lib.PathLike, record: Mapping[str, Any]):
  workdir_lib.write_json(workdir_lib.join(folder, PROVENANCE_FILE), dict(record))



@dataclasses.dataclass(frozen=True)
class Artifact:
  """One artifact of the plan.

  Attributes:
    kind: what it is, for messages ('base model', 'rank store', ...).
    path: its file (a JSON record) or folder.
    record: its provenance ({'fingerprint', 'fields', 'inputs'}).
  """
  kind: str
  path: str
  record: Mapping[str, Any]

  @property
  def fingerprint(self) -> str:
    return self.record["fingerprint"]

  @property
  def is_folder(self) -> bool:
    return not self.path.endswith(".json")

  def stored(self) -> Mapping[str, Any] | None:
    """The provenance stored with the artifact; {} when it has none."""
    if not workdir_lib.exists(self.path):
      return None
    if self.is_folder:
      return read_provenance(self.path) or {}
    return workdir_lib.read_json(self.path).get("provenance") or {}

  def matching(self) -> Mapping[str, Any] | None:
    """The JSON record of a file artifact if it is stored under this
    artifact's fingerprint; None when it is missing or of another config."""
    record = workdir_lib.read_json(self.path, missing_ok=True)
    if record and record.get("fingerprint") == self.fingerprint:
      return record
    return None

  def write(self):
    """Records the provenance of a folder artifact (before filling it)."""
    write_provenance(self.path, self.record)

  def stamped(self, values: Mapping[str, Any]) -> dict[str, Any]:
    """A file artifact's record: `values` with this artifact's fingerprint
    and provenance, the form `matching` and `stored` read back."""
    return {**values, "fingerprint": self.fingerprint,
            "provenance": dict(self.record)}

  def write_record(self, values: Mapping[str, Any]) -> dict[str, Any]:
    """Writes `stamped(values)` to the artifact's file (call it from the
    process that writes, process 0); returns the record."""
    record = self.stamped(values)
    workdir_lib.write_json(self.path, record)
    return record


@dataclasses.dataclass(frozen=True)
class Stale:
  artifact: Artifact
  changed: tuple[str, ...]  # Changed fields, or '(no provenance)'.
  corrupt: str = ""  # Why its record cannot be read, if it cannot.


def _changed_fields(stored: Mapping[str, Any], planned: Mapping[str, Any]
                    ) -> tuple[str, ...]:
  if not stored.get("fingerprint"):
    return ("(no provenance recorded)",)
  key = "lineage" if "lineage" in stored else "fields"
  old, new = stored.get(key, {}), planned[key]
  fields = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
  return tuple(fields)


def check(planned: Iterable[Artifact]) -> list[Stale]:
  """The planned artifacts that exist under another fingerprint."""
  stale = []
  for artifact in planned:
    try:
      stored = artifact.stored()
    except workdir_lib.WorkdirError as e:
      stale.append(Stale(artifact, (), corrupt=str(e)))
      continue
    if stored is None or stored.get("fingerprint") == artifact.fingerprint:
      continue
    stale.append(Stale(artifact, _changed_fields(stored, artifact.record)))
  return stale


def describe(stale: list[Stale], wd: workdir_lib.Workdir) -> str:
  """One line: the changed fields, the artifacts affected, how to proceed."""
  corrupt = [s for s in stale if s.corrupt]
  if corrupt:
    more = f" (and {len(corrupt) - 1} more)" if len(corrupt) > 1 else ""
    return (f"{corrupt[0].artifact.path} cannot be read{more}: rerun with "
            "--recompute to move it aside and compute it anew")
  fields = sorted({f for s in stale for f in s.changed})
  kinds: dict[str, int] = {}
  for s in stale:
    kinds[s.artifact.kind] = kinds.get(s.artifact.kind, 0) + 1
  affected = ", ".join(f"{n} {k}{'s' if n > 1 else ''}"
                       for k, n in kinds.items())
  shown = ", ".join(fields[:8]) + (f" and {len(fields) - 8} more"
                                   if len(fields) > 8 else "")
  return (f"the config differs from the one that made artifacts in {wd}: "
          f"changed {shown or 'inputs'} (affects {affected}); use a new "
          "--workdir, or rerun with --recompute to move them aside to "
          f"{wd.sub('stale')}/ and compute them anew")


def settle(planned: Iterable[Artifact], wd: workdir_lib.Workdir, *,
           recompute: bool, with_them: Iterable[str] = ()) -> list[Stale]:
  """Stops on stale artifacts, or moves them aside when `recompute`.

  Call it before any work, from process 0.

  Args:
    planned: the artifacts the run will use.
    wd: the workdir.
    recompute: move stale artifacts aside instead of stopping.
    with_them: files or folders made from the stale artifacts (the report,
      config.json), moved aside with them when there are any, so that the
      old run stays whole in one W/stale/<time>/.

  Raises:
    workdir.WorkdirError: stale artifacts and not `recompute`; one line.
  """
  stale = check(planned)
  if stale and not recompute:
    raise workdir_lib.WorkdirError(describe(stale, wd))
  if stale:
    folder = move_aside(stale, wd, with_them)
    logging.info("moved %d stale artifacts to %s", len(stale), folder)
  return stale


def move_aside(stale: list[Stale], wd: workdir_lib.Workdir,
               with_them: Iterable[str] = ()) -> str:
  """Moves stale artifacts (and the existing paths of `with_them`) under
  W/stale/<time>/, keeping their paths."""
  folder = wd.stale(time.strftime("%Y%m%d-%H%M%S"))
  for p in [s.artifact.path for s in stale] + [
      p for p in with_them if workdir_lib.exists(p)]:
    rel = os.path.relpath(p, wd.root) if not (
        workdir_lib.is_remote(wd.root)) else p[len(wd.root):].lstrip("/")
    workdir_lib.move(p, workdir_lib.join(folder, rel))
  return folder
