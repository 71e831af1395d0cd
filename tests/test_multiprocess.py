"""A REAL multi-process run: 2 JAX processes x 2 CPU devices (local coordinator,
gloo collectives) run the toy `--mode=roar` end to end, against the same
command in one process with 4 devices (the same global mesh, so the same
per-device batches). The 2-process run writes its degraded datasets
(`--config.roar.degrade=write`: per-process TFRecord shards, metadata from
process 0), the 1-process run degrades on the fly. Two devices per process
exercise every multi-process path that four do, at a fraction of the cost:
8 virtual devices on 2 cores spend most of their time waiting for each other
in the per-step collectives (and once left one process hung in a step).

Rankings: the data- and seed-determined ones (oracle, random) must be
identical, whichever process ranked an image; the gradient comes from each
run's own base model, so only its most important decile is compared.

Results: the training order is a function of (seed, step) (data/order.py):
both runs train on the same global batches, sharded alike over the same 4
devices; only the order of the cross-device sums differs (gloo between the
processes). Tolerances (absolute accuracy), stated per kind of figure, were
set when each process still shuffled its own slice; what was measured in
this setting (16x16 images, 150 steps):
- SATURATED: base models, and units at chance (oracle ROAR) or at 100%
  (oracle and gradient KAR): training noise has no room there (the runs
  differed by at most 0.004).
- NO_RETRAIN: the base model scored on degraded test sets (at most 0.04).
- RETRAINED: the other retrained units. Gradient ROAR at 50% is the noisy
  one: 0.78-0.86 across seeds 0-2 of one 1-process run, random ROAR and KAR
  0.988-0.996; the 1- and 2-process runs differed by at most 0.06.
- METRICS_TOLERANCE: the no-retrain metrics' areas over the first 100 test
  images (dealt out between the processes and gathered).
- LEAKAGE_TOLERANCE: each probe seed's mask-only accuracy on the same masks
  (oracle, random), same seed, same data order, same batches: values, not
  luck (measured: equal, every seed). The gradient's masks come from two base
  models: METRICS_TOLERANCE (measured: at most 0.024 apart).
Both runs are deterministic, so the comparison is repeatable.
"""

import csv
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from roar_jax import workdir as workdir_lib
from roar_jax.data import rank_store
from roar_jax.data import writer as writer_lib

# The toy task at a quarter of its pixels and half of its images and steps:
# every stage still runs on every process (both runs took 230 s on 2 loaded
# cores, 800 s at 32x32, 300 steps and 8 devices). On 16x16 images the base
# model is at 100% training accuracy by step 150.
NUM_TRAIN, NUM_TEST, NUM_STEPS = 2000, 500, 150
NUM_METRIC_IMAGES = 100
OVERRIDES = [
    "--config.data.image_size=16",
    "--config.data.toy.image_size=16",
    f"--config.data.toy.num_train={NUM_TRAIN}",
    f"--config.data.toy.num_test={NUM_TEST}",
    f"--config.train.num_steps={NUM_STEPS}",
    "--config.explain.estimators=('gradient', 'oracle', 'random')",
    "--config.roar.thresholds=(0.5,)",
    "--config.roar.num_seeds=1",
    # The no-retrain metrics on 100 test images, split between the processes
    # and gathered; the leakage probes train 2 seeds of 20 steps each.
    f"--config.metrics.num_images={NUM_METRIC_IMAGES}",
    "--config.metrics.leakage_steps=20",
    "--config.metrics.leakage_seeds=2",
]
SATURATED, NO_RETRAIN, RETRAINED = 0.03, 0.1, 0.15
# Metric areas and mask-only accuracies: the runs differed by at most 0.013.
METRICS_TOLERANCE = 0.05
# Same masks (oracle, random): the probes of the two runs were equal, every
# seed; one test image's flip is allowed for the order of the sums.
LEAKAGE_TOLERANCE = 1.5 / NUM_TEST
TIMEOUT_S = 1200


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _command(workdir, *extra):
  return [sys.executable, "-m", "roar_jax.main", "--config=configs/toy.py",
          f"--workdir={workdir}", "--mode=roar", *OVERRIDES, *extra]


def _env(devices):
  env = dict(os.environ)
  env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={devices} "
                      "--xla_cpu_collective_call_terminate_timeout_seconds=900 "
                      "--xla_cpu_collective_timeout_seconds=900")
  env["JAX_PLATFORMS"] = "cpu"
  env.pop("PJRT_NPROC", None)  # main.py sizes the thread pools itself.
  return env


def _run_two_processes(workdir) -> list[str]:
  port = _free_port()
  logs = [open(os.path.join(workdir, f"process{i}.log"), "w+")
          for i in range(2)]
  procs = [subprocess.Popen(
      _command(workdir, "--config.roar.degrade=write",
               f"--coordinator_address=127.0.0.1:{port}",
               "--num_processes=2", f"--process_id={i}"),
      cwd=REPO, env=_env(2), stdout=logs[i], stderr=subprocess.STDOUT)
           for i in range(2)]
  try:
    for p in procs:
      p.wait(timeout=TIMEOUT_S)
  finally:
    for p in procs:
      p.kill()
  texts = []
  for p, log in zip(procs, logs):
    log.seek(0)
    texts.append(log.read())
    log.close()
    assert p.returncode == 0, texts[-1][-3000:]
  return texts


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  two = tmp_path_factory.mktemp("two_processes")
  one = tmp_path_factory.mktemp("one_process")
  logs = _run_two_processes(two)
  single = subprocess.run(_command(one), cwd=REPO, env=_env(4),
                          capture_output=True, text=True, timeout=TIMEOUT_S)
  assert single.returncode == 0, single.stderr[-3000:]
  return two, one, logs


def _metrics(workdir):
  with open(os.path.join(workdir, "base", "metrics.json")) as f:
    return json.load(f)


def test_both_processes_joined_one_run(runs):
  _, _, logs = runs
  assert "process 0 of 2, 2 local / 4 global devices" in logs[0]
  assert "process 1 of 2, 2 local / 4 global devices" in logs[1]
  # Process 0 alone writes and announces the report.
  assert "report:" in logs[0] and "report:" not in logs[1]


def test_each_process_wrote_its_shards(runs):
  two, one, _ = runs
  datasets = sorted(os.listdir(os.path.join(two, "datasets")))
  assert len(datasets) == 6
  for name in datasets:
    folder = os.path.join(two, "datasets", name)
    assert writer_lib.is_complete(folder), name
    files = os.listdir(folder)
    for split in ("train", "test"):
      shards = sorted(f.split(".tfrecord-")[1] for f in files
                      if f"-{split}.tfrecord-" in f)
      assert shards == ["00000-of-00002", "00001-of-00002"], files
    source = writer_lib.read_dataset(folder)
    assert source.info.num_examples == {"train": NUM_TRAIN, "test": NUM_TEST}
  assert not os.path.exists(os.path.join(one, "datasets"))


def test_base_models_agree(runs):
  two, one, _ = runs
  a, b = _metrics(two), _metrics(one)
  assert a["steps"] == b["steps"] == NUM_STEPS
  assert a["num_test_examples"] == b["num_test_examples"] == NUM_TEST
  assert a["test_accuracy"] > 0.95 and b["test_accuracy"] > 0.95
  assert abs(a["test_accuracy"] - b["test_accuracy"]) < SATURATED


def test_rankings_match_one_process(runs):
  two, one, _ = runs
  a, b = rank_store.RankStore(str(two)), rank_store.RankStore(str(one))
  for split in ("train", "test"):
    for est in ("oracle", "random"):
      np.testing.assert_array_equal(a.read(est, split), b.read(est, split))
    # Two base models' gradients share most of their most important decile
    # (0.71 measured); unrelated rankings would share a tenth.
    la, lb = a.read("gradient", split), b.read("gradient", split)
    assert la.shape == lb.shape
    overlap = ((la < 10) & (lb < 10)).sum() / (la < 10).sum()
    assert overlap > 0.3, overlap


def _records(folder):
  return [r for _, r in workdir_lib.iter_json(str(folder))]


def _unit_accuracies(workdir):
  return {(r["estimator"], r["mode"]): r["test_accuracy"]
          for r in _records(workdir / "results")}


def test_every_unit_and_score_agrees(runs):
  two, one, _ = runs
  ra, rb = _unit_accuracies(two), _unit_accuracies(one)
  assert len(ra) == 6 and set(ra) == set(rb)
  saturated = {("oracle", "roar"), ("oracle", "kar"), ("gradient", "kar")}
  for unit in ra:
    tolerance = SATURATED if unit in saturated else RETRAINED
    assert abs(ra[unit] - rb[unit]) < tolerance, (unit, ra[unit], rb[unit])
  na, nb = ({(r["estimator"], r["mode"], r["threshold"]): r["test_accuracy"]
             for r in _records(w / "no_retrain")} for w in (two, one))
  assert len(na) == 6 and set(na) == set(nb)
  for key in na:
    assert abs(na[key] - nb[key]) < NO_RETRAIN, (key, na[key], nb[key])


def test_both_runs_tell_the_same_story(runs):
  for workdir in runs[:2]:
    acc = _unit_accuracies(workdir)
    # Removing the oracle's half leaves chance (0.25); keeping it keeps the
    # task; random removal sits in between.
    assert acc["oracle", "roar"] < 0.35
    assert acc["oracle", "roar"] < acc["random", "roar"]
    assert acc["oracle", "kar"] > 0.9
    assert os.path.exists(os.path.join(workdir, "report", "results.csv"))


def _csv(workdir, name):
  with open(os.path.join(workdir, "report", name)) as f:
    return list(csv.DictReader(f))


def test_metrics_gather_every_process_s_images(runs):
  """Each process scores its own test images; process 0 reports them all."""
  two, one, _ = runs
  a, b = _csv(two, "metrics.csv"), _csv(one, "metrics.csv")
  assert {(r["estimator"], r["metric"]) for r in a} == {
      (r["estimator"], r["metric"]) for r in b}
  assert len(a) == 3 * 4
  assert all(int(r["n"]) == NUM_METRIC_IMAGES for r in a + b)
  va = {(r["estimator"], r["metric"]): float(r["value"]) for r in a}
  vb = {(r["estimator"], r["metric"]): float(r["value"]) for r in b}
  # The same images, rankings (oracle, random) and nearly the same base
  # model: the areas agree closely; a dropped or doubled process's half
  # would leave n at 50 or 200.
  for key, value in va.items():
    assert abs(value - vb[key]) < METRICS_TOLERANCE, (key, value, vb[key])
  # The oracle's pixels are the evidence, in both runs.
  for v in (va, vb):
    assert v["oracle", "road_morf_auc"] < v["random", "road_morf_auc"]
    assert v["oracle", "deletion_auc"] < v["random", "deletion_auc"]
  leak_a, leak_b = ({(r["estimator"], r["mode"]): [float(a) for a in r[
      "accuracy_by_seed"].split()] for r in _csv(w, "leakage.csv")}
                    for w in (two, one))
  assert len(leak_a) == 6 and set(leak_a) == set(leak_b)
  for key, by_seed in leak_a.items():
    assert len(by_seed) == len(leak_b[key]) == 2
    # The oracle's and random's masks are the same in both runs (so are their
    # rankings, above); the gradient's come from each run's own base model.
    tolerance = (METRICS_TOLERANCE if key[0] == "gradient" else
                 LEAKAGE_TOLERANCE)
    np.testing.assert_allclose(by_seed, leak_b[key], atol=tolerance,
                               err_msg=str(key))
