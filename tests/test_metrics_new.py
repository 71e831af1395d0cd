"""SRG, infidelity, sensitivity-max/avg and faithfulness correlation.

- Peers: tests/references/metrics_peers.npz holds Captum 0.9's infidelity
  (normalize off and on) and sensitivity_max and Quantus 0.6's
  FaithfulnessCorrelation of a narrow SmallCNN's torch twin, each fed
  roar_jax's perturbations (tests/references/make_metrics_peers.py); ours on
  the stored weights, maps and draws give the same values.
- Draws: metric_draws' own Threefry gives jax.random's bits, normals and
  uniforms; faithfulness's subsets (Floyd's algorithm) are distinct and
  uniform over the sets (chi-square); the values do not depend on the
  inputs per call.
- Closed forms on linear models: infidelity 0 for the gradient map, the
  squared logit change for a zero map; sensitivity 0 for a constant map
  and ||d|| / ||x|| for the map x; faithfulness correlation 1 for
  w * (x - baseline).
- SRG (black fill) equals the deletion curves' areas of the reversed and
  the given order (curves.py, an independent computation); on the toy stage
  the oracle beats random under every fill, and every new metric reaches
  metrics.csv through `metrics.run` (the gradient of the piecewise-linear
  matched filter: infidelity and sensitivity 0, a high faithfulness
  correlation).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from roar_jax import models
from roar_jax.benchmark.roar import curves as curves_lib
from roar_jax.benchmark.roar import faithfulness
from roar_jax.benchmark.roar import infidelity
from roar_jax.benchmark.roar import metric_draws
from roar_jax.benchmark.roar import metric_options
from roar_jax.benchmark.roar import metric_registry
from roar_jax.benchmark.roar import metrics
from roar_jax.benchmark.roar import sensitivity
from roar_jax.benchmark.roar import srg
from roar_jax.benchmark.roar import grid
from roar_jax.config import validation
from roar_jax.data import preprocess
from roar_jax.data import rank_store

import test_metrics
from test_metrics import toy  # pylint: disable=unused-import

pytestmark = pytest.mark.usefixtures("fast_compiles")

REFERENCE = os.path.join(os.path.dirname(__file__), "references",
                         "metrics_peers.npz")
NEW = ("srg_channel_mean", "srg_black", "srg_blur", "srg_noisy_linear",
       "infidelity", "sensitivity_max", "sensitivity_avg",
       "faithfulness_correlation")


@pytest.fixture(scope="module")
def peers():
  """(logits fn, gradient fn, arrays of the .npz)."""
  d = dict(np.load(REFERENCE))
  params = traverse_util.unflatten_dict(
      {k[len("params/"):]: v for k, v in d.items()
       if k.startswith("params/")}, sep="/")
  width, classes = params["logits"]["kernel"].shape
  module = models.SmallCNN(classes, width=width // 4)
  logits = jax.tree_util.Partial(
      lambda x: module.apply({"params": params}, x))

  @jax.jit
  def gradient(x, t):
    return jax.vmap(lambda v, c: jax.grad(
        lambda u: logits(u[None])[0, c])(v))(x, t)

  return logits, gradient, d


def _keys(d, stream):
  return metric_draws.image_keys(int(d["seed"]), stream, d["indices"])


def test_draws_are_those_the_peers_were_fed(peers):
  _, _, d = peers
  s = int(d["samples"])
  draws = jnp.arange(s, dtype=jnp.uint32)
  noise = infidelity.perturbations(_keys(d, metric_draws.INFIDELITY_STREAM),
                                   draws, d["images"].shape[1:], d["std"])
  np.testing.assert_allclose(noise, d["infidelity_noise"], atol=1e-6)
  moved = sensitivity.perturbed_inputs(
      jnp.asarray(d["images"]), d["radius"],
      _keys(d, metric_draws.SENSITIVITY_STREAM), draws)
  np.testing.assert_allclose(np.asarray(moved).reshape(
      d["sensitivity_inputs"].shape), d["sensitivity_inputs"], atol=1e-6)
  subsets = faithfulness.subsets(
      _keys(d, metric_draws.FAITHFULNESS_STREAM),
      jnp.arange(int(d["runs"]), dtype=jnp.uint32), d["images"][0].size,
      int(d["subset"]))
  np.testing.assert_array_equal(subsets, d["faithfulness_subsets"])


@jax.jit
def _draws_both_ways(keys):
  """(ours, jax.random's) bits, normals and uniforms of 300 values a key."""
  each = lambda fn: jax.vmap(jax.vmap(fn))(keys)
  n = 300
  return ((metric_draws.bits(keys, n), metric_draws.normal(keys, n),
           metric_draws.uniform(keys, n, -0.02, 0.02)),
          (each(lambda k: jax.random.bits(k, (n,), jnp.uint32)),
           each(lambda k: jax.random.normal(k, (n,))),
           each(lambda k: jax.random.uniform(k, (n,), minval=-0.02,
                                             maxval=0.02))))


def test_draws_are_jax_randoms_values():
  """metric_draws computes Threefry itself (fused, for speed): the same bits
  as jax.random.bits, hence its uniform and normal values."""
  keys = metric_draws.sample_keys(
      metric_draws.image_keys(3, metric_draws.INFIDELITY_STREAM, [0, 9]),
      jnp.arange(3, dtype=jnp.uint32))
  with jax.threefry_partitionable(True):  # JAX's default layout.
    (bits, normal, uniform), want = _draws_both_ways(keys)
  np.testing.assert_array_equal(bits, want[0])
  np.testing.assert_array_equal(normal, want[1])
  # Measured: 1.9e-9 (the scaling's rounding).
  np.testing.assert_allclose(uniform, want[2], atol=1e-8)


def test_subsets_are_distinct_and_uniform():
  # 3 of 6 values: 20 sets, 3,000 draws, 150 expected per set.
  s = np.asarray(faithfulness.subsets(
      metric_draws.image_keys(5, metric_draws.FAITHFULNESS_STREAM,
                              np.arange(30)),
      jnp.arange(100, dtype=jnp.uint32), 6, 3)).reshape(-1, 3)
  assert all(len(set(row)) == 3 for row in s) and s.min() >= 0
  assert s.max() <= 5
  sets, counts = np.unique(np.sort(s, axis=1), axis=0, return_counts=True)
  assert len(sets) == 20
  # Pearson's chi-square, 19 degrees of freedom: 43.8 is its 0.1% tail.
  chi2 = ((counts - 150.0) ** 2 / 150.0).sum()
  assert chi2 < 43.8, chi2


# 5 inputs per call: 9 per image (f(x) and 8 draws), the calls straddle the
# images, the last one padded; 64: the 36 inputs in one call.
@pytest.mark.parametrize("batch_size", [5, 64])
def test_infidelity_equals_captum(peers, batch_size):
  logits, _, d = peers
  t = infidelity.terms(logits, d["images"], d["maps"], d["targets"],
                       _keys(d, metric_draws.INFIDELITY_STREAM),
                       samples=int(d["samples"]), std=float(d["std"]),
                       batch_size=batch_size)
  # Measured: 6.6e-6 relative, either batch size (float32 on both sides).
  np.testing.assert_allclose(infidelity.from_terms(t), d["captum_infidelity"],
                             rtol=1e-4)
  np.testing.assert_allclose(infidelity.from_terms(t, normalize=True),
                             d["captum_infidelity_normalized"], rtol=1e-4)


# 12 inputs per call: 3 calls of 1.5 images' draws; 32: all.
@pytest.mark.parametrize("batch_size", [12, 32])
def test_sensitivity_equals_captum(peers, batch_size):
  _, gradient, d = peers
  r = sensitivity.ratios(
      lambda x, t, i: gradient(jnp.asarray(x), jnp.asarray(t)), d["images"],
      d["maps"], d["targets"], d["indices"],
      _keys(d, metric_draws.SENSITIVITY_STREAM), samples=int(d["samples"]),
      radius=float(d["radius"]), batch_size=batch_size)
  # Measured: 2.5e-7 relative; the maps are float32 gradients of two
  # frameworks.
  np.testing.assert_allclose(r, d["captum_sensitivity_per_draw"], rtol=1e-4)
  np.testing.assert_allclose(r.max(1), d["captum_sensitivity_max"],
                             rtol=1e-4)
  np.testing.assert_allclose(r.mean(1),
                             d["captum_sensitivity_per_draw"].mean(1),
                             rtol=1e-4)


# 150 inputs per call: the 101 of image 0 and 49 of image 1; 404: all.
@pytest.mark.parametrize("batch_size", [150, 404])
def test_faithfulness_correlation_equals_quantus(peers, batch_size):
  logits, _, d = peers
  t = faithfulness.terms(logits, d["images"], d["maps"], d["targets"],
                         _keys(d, metric_draws.FAITHFULNESS_STREAM),
                         runs=int(d["runs"]), size=int(d["subset"]),
                         baseline="black", batch_size=batch_size)
  # Measured: 2.5e-7 absolute.
  np.testing.assert_allclose(faithfulness.pearson(t),
                             d["quantus_faithfulness"], atol=1e-4)


# ----------------------------------------------------------------------------
# Closed forms on linear models, through the registered per-image functions.


def _linear_batch(maps_of, logits=None, **options):
  """A Batch of 3 random 8 x 8 x 3 images, normalized = the uint8 images
  / 255 (mean 0, std 1), scored by a linear model (or `logits`)."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 8, 8, 3)).astype(np.uint8)
  w = jnp.asarray(rng.normal(size=(5, 8, 8, 3)).astype(np.float32))
  if logits is None:
    logits = jax.tree_util.Partial(
        lambda x: jnp.einsum("bhwc,khwc->bk", x, w) + 0.5)
  batch = metric_registry.Batch(
      "e", images, np.zeros(3, np.int32), np.array([5, 9, 12]), logits,
      metric_options.Options(batch_size=16, **options), None, seed=3,
      maps_fn=lambda est, x, t, i: maps_of(np.asarray(w), x, t))
  return batch, np.asarray(w)


def test_infidelity_closed_forms():
  batch, w = _linear_batch(lambda w, x, t: w[t])
  # I . w = f(x) - f(x - I) for a linear f: the gradient map is exact.
  exact = infidelity.per_image(batch)["infidelity"]
  zero, _ = _linear_batch(lambda w, x, t: np.zeros_like(x))
  by_hand = infidelity.per_image(zero)["infidelity"]
  noise = np.asarray(infidelity.perturbations(
      metric_draws.image_keys(3, metric_draws.INFIDELITY_STREAM, [5, 9, 12]),
      jnp.arange(10, dtype=jnp.uint32), (8, 8, 3), 0.2), np.float64)
  t = batch.predicted()
  change = np.einsum("bshwc,bhwc->bs", noise, w[t].astype(np.float64))
  np.testing.assert_allclose(by_hand, (change ** 2).mean(1), rtol=1e-4)
  assert np.all(exact < 1e-6 * by_hand)


def test_sensitivity_closed_forms():
  constant, _ = _linear_batch(lambda w, x, t: w[t])
  assert np.all(sensitivity.sensitivity_max(constant)["sensitivity_max"]
                == 0.0)
  # The map x (the gradient of |x|^2 / 2): the change is d itself.
  identity, _ = _linear_batch(lambda w, x, t: x)
  x = identity.normalized()
  moved = np.asarray(sensitivity.perturbed_inputs(
      jnp.asarray(x), 0.02, metric_draws.image_keys(
          3, metric_draws.SENSITIVITY_STREAM, [5, 9, 12]),
      jnp.arange(10, dtype=jnp.uint32))).reshape((3, 10) + x.shape[1:])
  d = (moved - x[:, None]).reshape(3, 10, -1)
  ratio = np.linalg.norm(d, axis=-1) / np.linalg.norm(x.reshape(3, -1),
                                                      axis=-1)[:, None]
  assert np.abs(d).max() <= 0.02 + 1e-7
  np.testing.assert_allclose(
      sensitivity.sensitivity_max(identity)["sensitivity_max"],
      ratio.max(1), rtol=1e-4)
  np.testing.assert_allclose(
      sensitivity.sensitivity_avg(identity)["sensitivity_avg"],
      ratio.mean(1), rtol=1e-4)


@pytest.mark.parametrize("baseline", ["black", "mean"])
def test_faithfulness_of_the_exact_map_is_one(baseline):
  def exact(w, x, t):  # w * (x - baseline): the logit drop of any subset.
    flat = x.reshape(len(x), -1)
    b = flat.min(-1) if baseline == "black" else flat.mean(-1)
    return w[t] * (x - b[:, None, None, None])

  batch, _ = _linear_batch(exact, faithfulness_runs=20,
                           faithfulness_baseline=baseline)
  r = faithfulness.per_image(batch)["faithfulness_correlation"]
  np.testing.assert_allclose(r, 1.0, atol=1e-5)
  shuffled, _ = _linear_batch(lambda w, x, t: np.roll(exact(w, x, t), 7),
                              faithfulness_runs=20,
                              faithfulness_baseline=baseline)
  assert np.all(faithfulness.per_image(shuffled)[
      "faithfulness_correlation"] < 0.9)
  # The default subset is the image's side: 8 of 192 values.
  assert faithfulness.subset_size(batch.options, (8, 8, 3)) == 8


# ----------------------------------------------------------------------------
# SRG and the stage.


def test_srg_black_is_the_difference_of_two_deletion_areas(toy):
  config, _, model, images, labels, masks = toy
  n, steps = 24, 8
  images, labels = images[:n], labels[:n]
  levels = test_metrics._oracle_levels(masks[:n], images.shape)
  options = metric_options.Options(names=("deletion",), fill="black",
                                   steps=steps, batch_size=64)
  batch = metric_registry.Batch(
      "oracle", images, labels, np.arange(n), model, options, config,
      levels=levels, mean=config.data.mean, std=config.data.std)
  gain = srg.gain_curves(srg.occlusion_curves(batch, "black"), steps)
  assert np.all(gain[:, 0] == 0) and np.all(gain[:, -1] == 0)
  kw = dict(options=options, mean=config.data.mean, std=config.data.std)
  morf = curves_lib.curves(model, images, labels, levels, np.arange(n),
                           **kw)["deletion"]
  # LeRF removes the bottom fraction: deletion of the reversed order.
  lerf = curves_lib.curves(model, images, labels, 99 - levels, np.arange(n),
                           **kw)["deletion"]
  fractions = metric_options.deletion_fractions(steps)
  np.testing.assert_allclose(gain[:, 1:-1], (lerf - morf)[:, 1:-1],
                             atol=1e-6)
  np.testing.assert_allclose(
      curves_lib.auc(gain, fractions),
      curves_lib.auc(lerf, fractions) - curves_lib.auc(morf, fractions),
      atol=1e-6)


def _stage(config, toy_data, workdir):
  """metrics.run over rank stores of the oracle, random and the gradient."""
  _, source, model, images, _, masks = toy_data
  plan = grid.plan_of(config, workdir)
  store = rank_store.RankStore(workdir)
  n = test_metrics.NUM_TEST
  x = preprocess.normalize(images, config.data)
  t = jnp.argmax(model(jnp.asarray(x)), -1)
  grads = jax.vmap(lambda v, c: jax.grad(lambda u: model(u[None])[0, c])(v))(
      jnp.asarray(x), t)
  for est, levels in (
      ("oracle", test_metrics._oracle_levels(masks, images.shape)),
      ("random", test_metrics._random_levels(images.shape)),
      ("gradient", metrics.rank_maps(grads, key=jax.random.key(2)))):
    store.write_shard(est, "test", 0, 1, np.arange(n), np.asarray(levels))
  fill = images.reshape(-1, 3).mean(0)
  return metrics.run(config, plan, source, fill, logits_fn=model)


def test_every_new_metric_reaches_metrics_csv(toy, tmp_path):
  config = test_metrics._config()
  with config.unlocked():
    config.explain.estimators = ("oracle", "random", "gradient")
    config.metrics.names = NEW
    config.metrics.steps = 10
    config.metrics.num_images = 32
    config.metrics.faithfulness_runs = 30
  validation.validate(config, mode="metrics")
  out = _stage(config, toy, str(tmp_path))
  rows = {(r["estimator"], r["metric"]): r for r in out["metrics"]}
  csv_rows = test_metrics._read(os.path.join(tmp_path, "report",
                                             "metrics.csv"))
  assert {r["metric"] for r in csv_rows} == set(NEW)
  for name in NEW[:4]:
    oracle, rand = rows[("oracle", name)], rows[("random", name)]
    assert oracle["n"] == rand["n"] == 32
    # Removing the pattern first kills the class, removing it last keeps it:
    # a gain near 1 for the oracle; a random order removes both alike.
    assert oracle["value"] > rand["value"] + 0.3, name
    assert abs(rand["value"]) < 0.1, name
  # The oracle has no maps of the model: only the ranking metrics score it.
  for name in NEW[4:]:
    assert ("oracle", name) not in rows
    assert rows[("random", name)]["n"] == rows[("gradient", name)]["n"] == 32
  value = {k: r["value"] for k, r in rows.items()}
  # The matched filter is linear wherever its best pattern position stays:
  # the gradient predicts every Gaussian perturbation's effect (measured
  # 3e-13 against random's 40) and does not move under 0.02 of noise.
  assert value[("gradient", "infidelity")] < 1e-6 * value[(
      "random", "infidelity")]
  assert value[("gradient", "sensitivity_max")] == 0.0
  # `random` draws its map from the image's index: the same map for the
  # perturbed copies.
  assert value[("random", "sensitivity_max")] == 0.0
  # Measured: gradient 0.86, random -0.01.
  assert value[("gradient", "faithfulness_correlation")] > 0.6
  assert abs(value[("random", "faithfulness_correlation")]) < 0.2


@pytest.mark.parametrize("field, value, message", [
    ("infidelity_samples", 0, r"config.metrics.infidelity_samples=0 must be "
     r"an integer >= 1"),
    ("faithfulness_runs", 1, r"faithfulness_runs=1 must be an integer >= 2"),
    ("sensitivity_radius", 0.0, r"sensitivity_radius=0.0 must be > 0"),
    ("faithfulness_baseline", "white", r"faithfulness_baseline='white': "
     r"expected one of \['black', 'mean'\]"),
])
def test_bad_options_fail_in_one_line(field, value, message):
  config = test_metrics._config()
  with config.unlocked():
    config.metrics.names = ("infidelity",)
    config.metrics[field] = value
  with pytest.raises(validation.ConfigError, match=message):
    validation.validate(config, mode="metrics")


def test_srg_channel_mean_needs_the_channel_mean_fill():
  with pytest.raises(ValueError, match=r"'srg_channel_mean' needs "
                     r"metrics.fill='channel_mean' \(it is 'black'\)"):
    metric_options.Options(names=("srg_channel_mean",), fill="black")


def test_options_enter_the_provenance_only_when_their_metric_runs():
  curves_only = metric_options.Options().fields()
  assert not any(k.startswith(("metrics.infidelity", "metrics.sensitivity",
                               "metrics.faithfulness")) for k in curves_only)
  with_infidelity = metric_options.Options(
      names=("deletion", "infidelity")).fields()
  assert with_infidelity["metrics.infidelity_noise_std"] == 0.2
  assert "metrics.sensitivity_radius" not in with_infidelity
  assert "metrics.faithfulness_subset_draw" not in with_infidelity
  # The subsets' draw names its algorithm: a record drawn another way is
  # stale.
  assert metric_options.Options(names=("faithfulness_correlation",)).fields(
  )["metrics.faithfulness_subset_draw"] == "floyd"
