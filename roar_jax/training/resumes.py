"""The record of the steps a run resumed from.

A resumed run reaches the same parameters as an uninterrupted one (the data
order is a function of (seed, step), the checkpoint holds the rest of the
state), but its records say that it was resumed: `W/resumes.json` lists the
steps, and the run's metrics carry them as `resumed_from_steps`.
"""

import jax

from roar_jax import workdir as workdir_lib

RESUMES_FILE = "resumes.json"


def steps(workdir: str) -> list[int]:
  """The steps a run in `workdir` was resumed from, in order ([]: never)."""
  record = workdir_lib.read_json(workdir_lib.join(workdir, RESUMES_FILE),
                                 missing_ok=True)
  return [int(s) for s in record["resumed_from_steps"]] if record else []


def record(workdir: str, step: int):
  """Appends `step` to the run's resumes (process 0) before it trains on, so
  a run interrupted twice remembers both."""
  if jax.process_index() == 0:
    workdir_lib.write_json(workdir_lib.join(workdir, RESUMES_FILE),
                           {"resumed_from_steps": steps(workdir) + [int(step)]})
