"""No-retrain metrics on the toy data: deletion / insertion, ROAD MoRF / LeRF,
the stage's records and report, agreement, and start-up validation."""

import copy
import csv
import io
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import agreement
from roar_jax.benchmark.roar import grid
from roar_jax.benchmark.roar import metric_scoring
from roar_jax.benchmark.roar import metrics
from roar_jax.config import validation
from roar_jax.data import preprocess
from roar_jax.data import rank_store
from roar_jax.data import sources
from roar_jax.data import synthetic


NUM_TEST = 128


def _config():
  config = load_config("toy")
  with config.unlocked():
    config.data.num_test = NUM_TEST
    config.explain.estimators = ("oracle", "random")
    config.roar.thresholds = (0.5,)
    config.roar.modes = ("roar",)
    config.metrics.steps = 10
    config.metrics.road_thresholds = (0.2, 0.5, 0.8)
    config.metrics.batch_size = 512
    config.metrics.leakage = False  # test_metrics_leakage.py
  return config


def matched_filter(config):
  """A classifier of the toy data without training: the correlation of each
  class pattern with the image at each pattern position, the best position's
  counts (logits ~ 7 for the true class, ~ +-1 for the others). An extra
  'no pattern' class of logit 5 wins once a third of the pattern is gone,
  so the model needs the pattern nearly whole, as a trained CNN does."""
  p = synthetic.toy_params(config.data.toy)
  patterns = jnp.asarray(synthetic.toy_patterns(
      p["num_classes"], p["patch_size"], pattern_seed=p["seed"]))
  corners = synthetic.toy_locations(p["image_size"], p["patch_size"],
                                    p["num_locations"])
  size = p["patch_size"]

  def logits(x):
    per_location = jnp.stack([jnp.einsum(
        "bhwc,khwc->bk", x[:, r:r + size, c:c + size], patterns)
                              for r, c in corners])
    scores = 0.05 * per_location.max(0)
    return jnp.concatenate([scores, jnp.full_like(scores[:, :1], 5.0)], -1)

  return jax.tree_util.Partial(logits)


def _read(path):
  return list(csv.DictReader(io.StringIO(open(path).read())))


@pytest.fixture(scope="module")
def toy():
  config = _config()
  source = sources.get_source(config.data)
  images, labels = source.arrays("test")
  masks = synthetic.toy_masks(config.data.toy, "test")[:NUM_TEST]
  return config, source, matched_filter(config), images, labels, masks


def _oracle_levels(masks, shape, seed=0):
  """The ground-truth pattern first, the rest in a random order."""
  maps = np.broadcast_to(masks[..., None], shape).astype(np.float32)
  return np.asarray(metrics.rank_maps(maps, key=jax.random.key(seed)))


def _random_levels(shape, seed=1):
  return np.asarray(metrics.rank_maps(np.ones(shape, np.float32),
                                      key=jax.random.key(seed)))


@pytest.fixture(scope="module")
def stage(toy, tmp_path_factory):
  """The metrics stage over a rank store holding the oracle and random."""
  config, source, model, images, _, masks = toy
  workdir = str(tmp_path_factory.mktemp("metrics"))
  plan = grid.plan_of(config, workdir)
  store = rank_store.RankStore(workdir)
  for est, levels in (("oracle", _oracle_levels(masks, images.shape)),
                      ("random", _random_levels(images.shape))):
    store.write_shard(est, "test", 0, 1, np.arange(NUM_TEST), levels)
  fill = images.reshape(-1, 3).mean(0)
  out = metrics.run(config, plan, source, fill, logits_fn=model)
  return config, workdir, plan, source, fill, out


def _auc(out, est, name):
  rows = {(r["estimator"], r["metric"]): r for r in out["metrics"]}
  return rows[(est, metrics.auc_name(name))]


def test_oracle_beats_random_on_all_four(stage):
  config, workdir, _, _, _, out = stage
  m = {(r["estimator"], r["metric"]): float(r["value"]) for r in _read(
      os.path.join(workdir, "report", "metrics.csv"))}
  assert len(m) == 8
  # Deleting the ground-truth pattern (36 of 1024 pixels) first kills the
  # explained class at the first step; random deletion takes most of the
  # pixels to. Measured (K = 20): oracle 0.03, random 0.29.
  assert m[("oracle", "deletion_auc")] < m[("random", "deletion_auc")] - 0.2
  # Inserting the pattern first restores the class at once: oracle 0.83,
  # random 0.29.
  assert m[("oracle", "insertion_auc")] > m[("random", "insertion_auc")] + 0.4
  # ROAD at 20/50/80%: imputing the pattern leaves no correct answer (oracle
  # MoRF 0.13, random 0.40); imputing the background first keeps it whole
  # (oracle LeRF 1.0, random 0.39).
  assert m[("oracle", "road_morf_auc")] < m[("random", "road_morf_auc")] - 0.2
  assert m[("oracle", "road_lerf_auc")] > m[("random", "road_lerf_auc")] + 0.5
  for est in ("oracle", "random"):
    for name in metrics.METRICS:
      r = _auc(out, est, name)
      assert r["n"] == NUM_TEST
      assert r["ci95_low"] <= r["value"] <= r["ci95_high"]
      assert r["ci95_high"] - r["ci95_low"] < 0.2


def test_records_curves_and_reuse(stage, monkeypatch):
  config, workdir, plan, source, fill, _ = stage
  record = workdir_lib.read_json(os.path.join(workdir, "metrics",
                                              "oracle.json"))
  assert record["provenance"]["inputs"]["base"] == plan.base.fingerprint
  assert record["provenance"]["inputs"]["ranks"] == (
      plan.ranks["oracle"].fingerprint)
  assert record["provenance"]["fields"]["metrics.steps"] == 10
  # K = 10 steps: 11 points 0, 10%, ..., 100%; ROAD: 0 and 3 thresholds.
  for name in ("deletion", "insertion"):
    assert record["metrics"][name]["fractions"] == pytest.approx(
        np.linspace(0, 1, 11))
    assert len(record["metrics"][name]["curve"]) == 11
  for name in ("road_morf", "road_lerf"):
    assert record["metrics"][name]["fractions"] == pytest.approx(
        [0, 0.2, 0.5, 0.8])
    # Both orders start from the clean image: the base model's accuracy.
    assert record["metrics"][name]["curve"][0] == pytest.approx(
        record["metrics"]["road_morf"]["curve"][0])
  # A rerun finds matching records and computes nothing.
  monkeypatch.setattr(metric_scoring, "_per_image",
                      lambda *a, **k: pytest.fail("rerun"))
  again = metrics.compute(config, plan, source, fill)
  assert again["oracle"]["fingerprint"] == record["fingerprint"]
  # Another option is another fingerprint: the record would be recomputed.
  other = copy.deepcopy(config)
  with other.unlocked():
    other.metrics.steps = 20
  assert (metrics.plan_artifacts(other, plan)["oracle"].fingerprint
          != record["fingerprint"])
  for name in ("metrics.csv", "metrics.png", "agreement.csv"):
    assert os.path.getsize(os.path.join(workdir, "report", name)) > 0


def _model_and_data(toy, n=48):
  config, _, model, images, labels, masks = toy
  return config, model, images[:n], labels[:n], masks[:n]


def test_endpoints_are_the_clean_image(toy):
  config, model, images, labels, masks = _model_and_data(toy)
  levels = _oracle_levels(masks, images.shape)
  options = metrics.Options(steps=7, names=("deletion", "insertion"))
  c = metrics.curves(model, images, labels, levels,
                     np.arange(len(images)), options=options,
                     fill_value=(128, 128, 128), mean=config.data.mean,
                     std=config.data.std)
  assert c["deletion"].shape == c["insertion"].shape == (48, 8)
  x = preprocess.normalize(images, config.data)
  probs = np.asarray(jax.nn.softmax(model(jnp.asarray(x)), -1))
  target = probs.argmax(-1)
  np.testing.assert_array_equal(c["target"], target)
  clean = probs[np.arange(48), target]
  np.testing.assert_allclose(c["deletion"][:, 0], clean, atol=1e-5)
  np.testing.assert_allclose(c["insertion"][:, -1], clean, atol=1e-5)
  # Insertion from the blurred image also ends at the clean image.
  blur = metrics.Options(steps=7, names=("insertion",),
                         insertion_start="blur", blur_sigma=2.0)
  cb = metrics.curves(model, images, labels, levels,
                      np.arange(48), options=blur, fill_value=(128,) * 3,
                      mean=config.data.mean, std=config.data.std)
  np.testing.assert_allclose(cb["insertion"][:, -1], clean, atol=1e-5)
  assert not np.allclose(cb["insertion"][:, 0], c["insertion"][:, 0])


def test_constant_map_gives_the_random_expectation(toy):
  config, model, images, labels, _ = _model_and_data(toy, n=64)
  options = metrics.Options(steps=5, road_thresholds=(0.5,))
  kw = dict(options=options, fill_value=(128,) * 3, mean=config.data.mean,
            std=config.data.std)
  ones = np.ones(images.shape, np.float32)
  constant = metrics.rank_maps(ones, key=jax.random.key(1))
  # A constant map has no order: ties fall at random, unlike the position
  # order of the rank store.
  assert len(np.unique(np.asarray(constant)[:2].reshape(2, -1), axis=0)) == 2
  c = metrics.summarize(metrics.curves(
      model, images, labels, constant, np.arange(64), **kw), options)
  # The random-order expectation, from 3 independent random orders each.
  rand = [metrics.summarize(metrics.curves(
      model, images, labels,
      metrics.rank_maps(np.asarray(jax.random.uniform(
          jax.random.key(10 + r), images.shape)), key=jax.random.key(20 + r)),
      np.arange(64), **kw), options) for r in range(4)]
  for name in metrics.METRICS:
    expected = np.mean([r[name]["value"] for r in rand])
    half = (c[name]["ci95_high"] - c[name]["ci95_low"]) / 2
    assert abs(c[name]["value"] - expected) < half + 0.02, name


def test_auc_and_confidence_interval_values():
  # A straight line from 1 to 0 has area 1/2; a step at 0.5 too.
  f = np.linspace(0, 1, 11)
  assert metrics.auc(1 - f, f) == pytest.approx(0.5)
  assert metrics.auc(np.array([1.0, 1.0, 0.0]), [0, 0.5, 1.0]) == (
      pytest.approx(0.75))
  # ROAD's fractions stop at 0.9: the area is divided by 0.9 (a mean).
  assert metrics.auc(np.ones(4), [0, 0.3, 0.6, 0.9]) == pytest.approx(1.0)
  mean, low, high, n = metrics.mean_ci([1.0, 2.0, 3.0, 4.0])
  # t(0.975, 3) = 3.182, sd = 1.291, sqrt(4) = 2.
  assert (mean, n) == (2.5, 4)
  assert high - mean == pytest.approx(3.1824 * 1.2910 / 2, rel=1e-3)
  assert mean - low == pytest.approx(high - mean)
  one = metrics.mean_ci([0.7])
  assert one[0] == 0.7 and math.isnan(one[1]) and one[3] == 1


def test_agreement_spearman_values():
  rows = []
  for est, d, i, mo, le in [("a", 0.1, 0.9, 0.2, 0.8), ("b", 0.2, 0.8, 0.3,
                                                      0.7),
                            ("c", 0.3, 0.7, 0.1, 0.6), ("d", 0.4, 0.6, 0.4,
                                                        0.5)]:
    for name, v in zip(metrics.METRICS, (d, i, mo, le)):
      rows.append({"estimator": est, "metric": metrics.auc_name(name),
                   "value": v})
  results = [{"estimator": e, "mode": m, "threshold": 0.5,
              "mean_accuracy": acc}
             for e, m, acc in [("a", "roar", 0.3), ("b", "roar", 0.4),
                               ("c", "roar", 0.5), ("d", "roar", 0.6),
                               ("a", "kar", 0.5), ("b", "kar", 0.7),
                               ("c", "kar", 0.6), ("d", "kar", 0.8)]]
  table = {(r["metric_a"], r["metric_b"]): r
           for r in agreement.table(rows, results)}
  assert len(table) == 15
  # Deletion and insertion order a > b > c > d alike.
  assert table[("deletion_auc", "insertion_auc")]["spearman"] == (
      pytest.approx(1.0))
  # MoRF orders c > a > b > d: rho = 1 - 6 * (1 + 1 + 4 + 0) / 60 = 0.4.
  assert table[("deletion_auc", "road_morf_auc")]["spearman"] == (
      pytest.approx(0.4))
  assert table[("deletion_auc", "roar")]["spearman"] == pytest.approx(1.0)
  # KAR orders d > b > c > a: the reverse of deletion but for b, c:
  # ranks (1,2,3,4) vs (4,2,3,1): rho = 1 - 6 * (9 + 0 + 0 + 9) / 60 = -0.8.
  assert table[("deletion_auc", "kar")]["spearman"] == pytest.approx(-0.8)
  assert table[("deletion_auc", "kar")]["n"] == 4
  two = agreement.table(rows[:8])
  assert math.isnan(two[0]["spearman"])  # 2 estimators: no correlation.


@pytest.mark.parametrize("field, value, message", [
    ("steps", 0, "config.metrics.steps=0"),
    ("road_thresholds", (0.0, 0.5), "config.metrics.road_thresholds: 0.0"),
    ("road_thresholds", (0.5, 1.0), "config.metrics.road_thresholds: 1.0"),
    ("road_thresholds", (0.5, -0.2), "config.metrics.road_thresholds: -0.2"),
    ("names", ("deletion", "aopc"), "config.metrics.names: unknown metric "
     "'aopc'"),
    ("fill", "zeros", "config.metrics.fill='zeros'"),
    ("leakage_steps", -1, "config.metrics.leakage_steps=-1"),
    ("leakage_seeds", 0, "config.metrics.leakage_seeds=0"),
])
@pytest.mark.parametrize("mode", ["metrics", "roar"])
def test_bad_options_fail_at_start_up(field, value, message, mode):
  config = load_config("toy")
  with config.unlocked():
    config.metrics[field] = value
  with pytest.raises(validation.ConfigError) as e:
    validation.validate(config, mode)
  assert str(e.value).startswith(message)
  assert "\n" not in str(e.value)
