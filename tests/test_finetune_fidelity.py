"""Fine-tune-once fidelity on a small toy run: the fine-tune makes masked
images familiar, the oracle beats random on the ff_ columns, records carry
provenance and are reused, the rows reach metrics.csv and agreement.csv,
the masks are what they claim, and bad options fail in one line."""

import csv
import io
import math
import os

import numpy as np
import pytest

from conftest import load_config
from roar_jax import training
from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import agreement
from roar_jax.benchmark.roar import finetune_fidelity as ff
from roar_jax.benchmark.roar import finetune_fidelity_data as ff_data
from roar_jax.benchmark.roar import grid
from roar_jax.benchmark.roar import metric_registry
from roar_jax.benchmark.roar import metric_scoring
from roar_jax.benchmark.roar import pipeline
from roar_jax.config import validation
from roar_jax.data import degradation
from roar_jax.data import rank_store
from roar_jax.data import source_protocol
from roar_jax.data import sources
from roar_jax.data import synthetic

NUM_TEST = 128


def _config():
  config = load_config("toy")
  with config.unlocked():
    config.data.toy.num_train = 1000
    config.data.toy.num_test = NUM_TEST
    config.model.small_cnn.width = 8
    config.train.num_steps = 150
    config.explain.estimators = ("oracle", "random")
    config.roar.thresholds = (0.5,)
    config.roar.modes = ("roar",)
    config.metrics.names = ("deletion",)
    config.metrics.steps = 10
    config.metrics.num_images = NUM_TEST
    config.metrics.leakage = False
    # Black: the toy images' noise has the channel mean for its mean, so
    # the base model already takes mean-filled pixels in its stride (base
    # 0.66, fine-tuned 0.62 on 0-100% masks); black ones it does not.
    config.metrics.fill = "black"
    config.finetune.enabled = True
    config.finetune.steps = 60
    config.finetune.fraction_range = (0.0, 0.5)
  return config


def _read(path):
  return list(csv.DictReader(io.StringIO(open(path).read())))


def _levels(scores):
  """Pixel levels of [N, H, W] scores, the highest first."""
  flat = scores.reshape(len(scores), -1)
  ranks = np.argsort(np.argsort(-flat, axis=1), axis=1)
  return (ranks * 100 // flat.shape[1]).astype(np.uint8).reshape(
      scores.shape)


@pytest.fixture(scope="module")
def run(fast_compiles, tmp_path_factory):  # pylint: disable=unused-argument
  """The base model, an oracle and a random rank store, then the metrics
  stage with the fine-tune on."""
  config = _config()
  workdir = str(tmp_path_factory.mktemp("finetune"))
  source = sources.get_source(config.data)
  plan = grid.plan_of(config, workdir)
  pipeline.train_base(config, plan, source)
  images, _ = source.arrays("test")
  masks = synthetic.toy_masks(config.data.toy, "test")
  store = rank_store.RankStore(workdir)
  rng = np.random.default_rng(0)
  for est, scores in (("oracle", masks + rng.random(masks.shape)),
                      ("random", rng.random(masks.shape))):
    store.write_shard(est, "test", 0, 1, np.arange(len(images)),
                      _levels(scores))
  fill = images.reshape(-1, 3).mean(0)
  out = pipeline.staged_metrics(config, plan, source, fill)
  out["finetune"] = ff.summary(config, plan)
  return config, workdir, plan, source, fill, out


def test_fine_tune_makes_masked_images_familiar(run):
  _, _, _, _, _, out = run
  masked = out["finetune"]["masked_test_accuracy"]
  # 0-50% of the pixels black: the base model sees black pixels as
  # evidence and falls to chance (measured 0.28); 60 steps on masked
  # training images bring it back (measured 0.59, 0.68 after 100 steps).
  assert masked["base"] < 0.4
  assert masked["finetuned"] > masked["base"] + 0.15
  assert out["finetune"]["clean_test_accuracy"]["base"] > 0.9


def test_oracle_beats_random_on_the_ff_columns(run):
  _, workdir, _, _, _, _ = run
  m = {(r["estimator"], r["metric"]): float(r["value"]) for r in _read(
      os.path.join(workdir, "report", "metrics.csv"))}
  assert set(m) == {(e, c) for e in ("oracle", "random")
                    for c in ("deletion_auc", "ff_deletion_auc")}
  # Measured: ff 0.279 (oracle) against 0.323 (random); on the base model
  # 0.276 against 0.278, a tie.
  assert m["oracle", "ff_deletion_auc"] < m["random", "ff_deletion_auc"] - 0.02
  assert metric_registry.direction("ff_deletion_auc") is True

  def at_10_percent(folder, est):
    record = workdir_lib.read_json(os.path.join(workdir, folder,
                                                f"{est}.json"))
    assert record["metrics"]["deletion"]["fractions"][1] == 0.1
    return record["metrics"]["deletion"]["curve"][1]

  # Black pixels throw the base model off whatever is deleted: 10% deleted
  # at random and the class pattern deleted look alike to it (measured
  # 0.278, 0.258). The fine-tuned model still sees the class after random
  # deletion (0.453) and not after the oracle's (0.281).
  assert abs(at_10_percent("metrics", "random")
             - at_10_percent("metrics", "oracle")) < 0.05
  assert (at_10_percent("finetune_fidelity", "random")
          > at_10_percent("finetune_fidelity", "oracle") + 0.1)


def test_records_carry_provenance_and_are_reused(run, monkeypatch):
  config, workdir, plan, source, fill, out = run
  artifacts = ff.plan_artifacts(config, plan)
  model = artifacts[ff.MODEL_KEY]
  stored = workdir_lib.read_json(os.path.join(model.path,
                                              "provenance.json"))
  assert stored["inputs"]["base"] == plan.base.fingerprint
  assert stored["fields"]["finetune.steps"] == 60
  assert stored["fields"]["train.num_steps"] == 60
  record = workdir_lib.read_json(os.path.join(
      workdir, "finetune_fidelity", "oracle.json"))
  assert record["provenance"]["inputs"] == {
      "finetuned": model.fingerprint,
      "ranks": plan.ranks["oracle"].fingerprint}
  assert record["metrics"]["deletion"]["n"] == NUM_TEST
  # A rerun trains and scores nothing.
  monkeypatch.setattr(training, "train_and_evaluate",
                      lambda *a, **k: pytest.fail("retrained"))
  monkeypatch.setattr(metric_scoring, "score",
                      lambda *a, **k: pytest.fail("rescored"))
  records, summary = ff.compute(config, plan, source, fill)
  assert records["oracle"]["fingerprint"] == record["fingerprint"]
  assert summary == out["finetune"]


def test_rows_reach_metrics_csv_and_agreement(run):
  config, workdir, plan, _, _, out = run
  pairs = {(r["metric_a"], r["metric_b"]): r for r in _read(
      os.path.join(workdir, "report", "agreement.csv"))}
  assert pairs["deletion_auc", "ff_deletion_auc"]["n"] == "2"
  # Oriented as deletion is (lower is better): the oracle scores higher.
  scores = agreement.scores(out["metrics"])
  assert scores["ff_deletion_auc"]["oracle"] > scores["ff_deletion_auc"][
      "random"]
  # --mode=report's metrics.csv carries the stored rows, with ROAR's
  # agreement: ROAR ranks the oracle first too (lower accuracy), rho over
  # three estimators with a third row made up.
  base = [r for r in out["metrics"] if r["metric"] == "deletion_auc"]
  rows = base + ff.stored_rows(config, plan)
  assert [r["metric"] for r in rows[len(base):]] == ["ff_deletion_auc"] * 2
  extra = [{"estimator": "third", "metric": "ff_deletion_auc",
            "value": 0.99, "ci95_low": 0.9, "ci95_high": 1.0, "n": 1}]
  results = [{"estimator": e, "mode": "roar", "threshold": 0.5,
              "mean_accuracy": a, "fill": "channel_mean"}
             for e, a in (("oracle", 0.3), ("random", 0.8), ("third", 0.9))]
  table = {frozenset((r["metric_a"], r["metric_b"])): r
           for r in agreement.table(rows + extra, results)}
  pair = table[frozenset(("ff_deletion_auc", "roar"))]
  assert pair["n"] == 3
  assert pair["spearman"] == pytest.approx(1.0)


def test_masks_remove_the_drawn_fraction():
  n, size = 6, 8
  base = source_protocol.ArraySource(source_protocol.DatasetInfo(
      "white", 2, (size, size, 3), {"train": n, "test": n}), {
          s: (np.full((n, size, size, 3), 255, np.uint8), np.arange(n) % 2)
          for s in ("train", "test")})
  masked = ff_data.RandomMaskSource(
      base, fill_value=(0.0, 0.0, 0.0), fraction_range=(0.1, 0.9), seed=3,
      draws=3)
  assert masked.info.num_examples == {"train": 3 * n, "test": n}
  rows = list(masked.load("train").as_numpy_iterator())
  assert [r["index"] for r in rows] == list(range(3 * n))
  again = list(masked.load("train").as_numpy_iterator())
  for r, s in zip(rows, again):
    np.testing.assert_array_equal(r["image"], s["image"])
    threshold, _ = masked.draw("train", r["index"], (size, size))
    k = round(100 * threshold)
    assert 10 <= k <= 90
    # Levels rank * 100 // 64: the positions below level k are the first
    # ceil(64 k / 100) ranks; every channel of a removed pixel is filled.
    removed = (r["image"] == 0).all(-1)
    assert removed.sum() == math.ceil(size * size * k / 100)
    assert ((r["image"] == 0).any(-1) == removed).all()
  # Equal to a ROAR unit's degradation under the drawn ranking, on images
  # of noise filled with a channel mean that rounds (127.5 -> 128).
  noise = np.random.default_rng(4).integers(0, 256, (n, size, size, 3),
                                            dtype=np.uint8)
  fill = (127.5, 3.2, 250.0)
  mean_filled = ff_data.RandomMaskSource(
      base, fill_value=fill, fraction_range=(0.0, 1.0), seed=5)
  got = mean_filled.mask(noise, "test", np.arange(n))
  for i in range(n):
    threshold, levels = mean_filled.draw("test", i, (size, size))
    np.testing.assert_array_equal(got[i], degradation.degrade(
        noise[i], levels, threshold=threshold, mode="roar",
        fill="channel_mean", channel_mean=fill))
  # Draws of one image differ.
  assert not all((rows[i]["image"] == rows[i + n]["image"]).all()
                 for i in range(n))


@pytest.mark.parametrize("field, value, message", [
    ("steps", -1, "config.finetune.steps=-1"),
    ("learning_rate_scale", 0.0, "config.finetune.learning_rate_scale=0.0"),
    ("fraction_range", (0.5, 0.2), "config.finetune.fraction_range=(0.5, "),
    ("fraction_range", (0.0, 1.5), "config.finetune.fraction_range=(0.0, "),
    ("draws", -2, "config.finetune.draws=-2"),
    ("metrics", ("deletion", "aopc"), "config.finetune.metrics: unknown "
     "metric 'aopc'"),
])
@pytest.mark.parametrize("mode", ["metrics", "finetune_fidelity"])
def test_bad_options_fail_at_start_up(field, value, message, mode):
  config = load_config("toy")
  with config.unlocked():
    config.finetune[field] = value
  with pytest.raises(validation.ConfigError) as e:
    validation.validate(config, mode)
  assert str(e.value).startswith(message)
  assert "\n" not in str(e.value)


def test_blur_fill_is_refused_with_the_switch_on():
  config = load_config("toy")
  with config.unlocked():
    config.metrics.fill = "blur"
  validation.validate(config, "metrics")  # Off: no complaint.
  with pytest.raises(validation.ConfigError, match=r"^config\.finetune\."
                     r"enabled: config\.metrics\.fill='blur'"):
    validation.validate(config, "finetune_fidelity")
