r"""The accelerator figures in one run: one JSON file and one table.

  python bench/device.py [--out device_results.json] [--sections a,b]
  python bench/device.py --tiny   # every section on a CPU in seconds (CI)

Written to run on one GPU (H100-class) or TPU host in under 8 minutes. Each
section is a function in `device_sections.SECTIONS`; one that fails records
its error in the JSON and the run goes on. The sections reuse the other bench
scripts:

  train_step   the project's train step vs a plain Flax step (bench/train.py's
               `bench_model`: one step of each must agree, then interleaved
               timing), for ResNet-50 (224px) and the fast CIFAR CNN (32px):
               images/s and MFU = XLA's FLOPs of the compiled step / median
               step time / the device's measured fp32 `jnp.dot` rate.
  saliency_throughput  single-pass `gradient` and the 15-sample
               `sg_sq.gradient` ensemble on the fast CNN, images/s
               (bench/saliency.py's timing; `gradient` checked against
               bench/single_pass.py's bare gradient).
  road_fill    ROAD's noisy linear fill of the same images and masks, by
               conjugate gradients on the device and by the host's banded
               Cholesky: images/s of each, and how far they differ.
  roar_unit    one CIFAR-10 ROAR unit end to end through `pipeline.run` in a
               temporary workdir (the toy grid with --tiny): wall seconds of
               each stage the pipeline calls.
  batched_vs_sequential  `bench/batched_retrains.py`'s `measure(tiny)`, or
               "unavailable" when that module does not import.
"""

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import sys
import time
import traceback

import jax
import numpy as np

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable-next=g-import-not-at-top,wrong-import-position
from bench import device_sections

def environment(args) -> dict:
  """The date, JAX build, devices and machine of the run."""
  devices = jax.devices()
  return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(
              timespec="seconds"),
          "tiny": args.tiny, "jax": jax.__version__,
          "jaxlib": importlib.metadata.version("jaxlib"),
          "backend": jax.default_backend(),
          "devices": [str(d) for d in devices],
          "device_kind": devices[0].device_kind, "device_count": len(devices),
          "python": platform.python_version(), "cpus": os.cpu_count(),
          "load_average": os.getloadavg()}


def run_section(fn, args) -> dict:
  """One section's figures, or its error: a failure never stops the run."""
  start = time.perf_counter()
  try:
    result = {"status": "ok", **fn(args)}
  except Exception as e:  # pylint: disable=broad-except
    result = {"status": "error", "error": f"{type(e).__name__}: {e}",
              "traceback": traceback.format_exc(limit=8),
              "table": [["error", f"{type(e).__name__}: {str(e)[:100]}", ""]]}
  result["wall_s"] = time.perf_counter() - start
  print(f"{fn.__name__}: {result['status']} in {result['wall_s']:.1f} s",
        flush=True)
  return result


def write(record: dict, path: str) -> None:
  """The record as JSON (NumPy values as lists, anything else as text)."""
  with open(path, "w") as f:
    json.dump(record, f, indent=1, default=_jsonable)


def _jsonable(value):
  """json.dump's fallback: NumPy and JAX scalars and arrays, else str."""
  if isinstance(value, (np.generic, np.ndarray, jax.Array)):
    return np.asarray(value).tolist()
  return str(value)


def print_table(record: dict) -> None:
  """The devices, then every section's rows as one Markdown table."""
  env = record["environment"]
  print(f"\n{env['device_count']} x {env['device_kind']} ({env['backend']}); "
        f"jax {env['jax']}; tiny={env['tiny']}; "
        f"{record['wall_s']:.1f} s in all")
  print("| section | item | value | unit |\n|---|---|---|---|")
  for name, result in record["sections"].items():
    for item, value, unit in result.get("table", []):
      shown = (f"{value:.4g}" if isinstance(value, float) and
               math.isfinite(value) else value)
      print(f"| {name} | {item} | {shown} | {unit} |")


def main():
  """Parses the command line, runs the sections, writes and prints."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="device_results.json")
  parser.add_argument("--tiny", action="store_true",
                      help="tiny models, batches and steps, for a CPU (CI)")
  parser.add_argument("--sections", default="",
                      help="comma-separated subset of: " +
                      ", ".join(f.__name__ for f in device_sections.SECTIONS))
  parser.add_argument("--cifar-path", default="",
                      help="roar_unit: CIFAR-10 as an ImageFolder .tar.gz "
                      "(default: the config's, else TFDS)")
  args = parser.parse_args()
  names = [f.__name__ for f in device_sections.SECTIONS]
  args.sections = [s for s in args.sections.split(",") if s]
  for name in args.sections:
    if name not in names:
      parser.error(f"--sections: unknown section {name!r}; known: {names}")
  start = time.perf_counter()
  record = {"environment": environment(args), "sections": {}}
  for fn in device_sections.SECTIONS:
    if not args.sections or fn.__name__ in args.sections:
      record["sections"][fn.__name__] = run_section(fn, args)
      # Written after every section: a run stopped early keeps its figures.
      record["wall_s"] = time.perf_counter() - start
      record["load_average_end"] = os.getloadavg()
      write(record, args.out)
  print_table(record)


if __name__ == "__main__":
  main()
