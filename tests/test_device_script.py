"""bench/device.py --tiny on a CPU: every section runs, its figures hold."""

import json
import math
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO

SECTIONS = ("train_step", "saliency_throughput", "road_fill", "roar_unit",
            "batched_vs_sequential")


def _rate(value) -> bool:
  return isinstance(value, float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def record(tmp_path_factory):
  """The JSON of one tiny run, and its wall seconds.

  The script runs as CI would call it: one CPU device (conftest's eight
  simulated devices would only slow it down on two cores), and XLA without
  most optimizations (as `fast_compiles`): --tiny compiles a ResNet-50 and
  the toy grid's steps far longer than it runs them, and the checks below
  are of values and of the record's shape, not of speed.
  """
  folder = tmp_path_factory.mktemp("device")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  start = time.perf_counter()
  subprocess.run([sys.executable, str(REPO / "bench" / "device.py"), "--tiny",
                  "--out", "tmp.json"], cwd=folder, check=True, timeout=300,
                 env={**env, "JAX_PLATFORMS": "cpu",
                      "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"})
  seconds = time.perf_counter() - start
  with open(folder / "tmp.json") as f:
    return json.load(f), seconds


def test_every_section_runs(record):
  out, _ = record
  assert tuple(out["sections"]) == SECTIONS
  for name in SECTIONS[:-1]:
    assert out["sections"][name]["status"] == "ok", out["sections"][name]
  env = out["environment"]
  assert env["tiny"] and env["backend"] == "cpu" and env["devices"]
  assert env["jax"].count(".") == 2 and env["device_kind"]
  walls = [s["wall_s"] for s in out["sections"].values()]
  assert all(w > 0 for w in walls) and sum(walls) <= out["wall_s"]


def test_train_step_agrees_and_mfu_is_a_fraction(record):
  section = record[0]["sections"]["train_step"]
  peak = section["peak_flops_per_s"]
  assert peak == pytest.approx(1e9 * max(section["matmul_gflops_start_end"]))
  assert set(section["models"]) == {"resnet50", "fast_cnn"}
  r50 = section["models"]["resnet50"]
  assert (r50["image_size"], r50["batch"]) == (32, 2)
  for r in section["models"].values():
    # bench/train.py's one-step check: the same loss and parameters.
    assert r["check"]["loss_diff"] <= 1e-4
    assert r["check"]["params_diff_over_update"] <= 1e-2
    for step in ("project", "plain"):
      s = r["steps"][step]
      assert _rate(s["images_per_s_per_device"]) and _rate(s["flops"])
      assert s["images_per_s_per_device"] == pytest.approx(
          r["batch"] / s["median_s"])
      assert 0 < s["mfu"] <= 1
      assert s["mfu"] == pytest.approx(s["flops"] / s["median_s"] / peak)
    assert r["project_over_plain_time"] == pytest.approx(
        r["steps"]["project"]["median_s"] / r["steps"]["plain"]["median_s"])
    # Both steps run the same model: XLA counts nearly the same FLOPs.
    assert r["steps"]["project"]["flops"] == pytest.approx(
        r["steps"]["plain"]["flops"], rel=0.01)


def test_saliency_rates_and_gradient_equals_bare(record):
  section = record[0]["sections"]["saliency_throughput"]
  assert section["num_samples"] == 15
  assert set(section["images_per_s"]) == {
      "bare jax.grad", "gradient", "sg_sq.gradient (J=15)"}
  assert all(_rate(v) for v in section["images_per_s"].values())
  assert section["bare_max_abs"] > 0
  assert (section["gradient_vs_bare_max_abs"]
          <= 1e-4 * section["bare_max_abs"])
  # Squared gradients averaged: non-negative.
  assert section["sg_sq_finite"] and section["sg_sq_min"] >= 0


def test_cg_and_banded_fills_agree(record):
  section = record[0]["sections"]["road_fill"]
  # Tolerances: 1e-5 in [0, 1] units before rounding, one uint8 level after.
  assert (section["fill_tolerance"], section["uint8_tolerance"]) == (1e-5, 1)
  (size,) = section["sizes"]
  assert size["size"] == 32 and size["images"]["compared"] >= 4
  assert 0 <= size["fill_max_abs_diff"] <= 1e-5
  assert size["uint8_max_abs_diff"] <= 1
  assert _rate(size["images_per_s"]["cg"])
  assert _rate(size["images_per_s"]["banded"])


def test_one_roar_unit_end_to_end(record):
  section = record[0]["sections"]["roar_unit"]
  assert section["config"] == "toy" and section["units_run"] == 1
  assert section["unit"] == "gradient/roar/0.5/0"
  stages = section["stage_seconds"]
  assert set(stages) == {"base_train", "explain", "channel_mean",
                         "no_retrain_eval", "retrain_unit", "total"}
  assert all(_rate(v) for v in stages.values())
  parts = sum(v for k, v in stages.items() if k != "total")
  assert parts <= stages["total"] * 1.001
  for key in ("base_test_accuracy", "unit_test_accuracy"):
    assert 0 <= section[key] <= 1


def test_batched_retrains_recorded(record):
  section = record[0]["sections"]["batched_vs_sequential"]
  if section["status"] == "unavailable":
    assert "batched_retrains" in section["reason"]
  else:
    assert section["status"] == "ok" and isinstance(section["result"], dict)
    assert section["result"]
