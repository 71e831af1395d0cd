"""The lecture's estimators on a model that reads only a box of pixels.

Occlusion, RISE, LIME, KernelSHAP, XRAI and DeepLIFT put most of their
top-ranked positions inside the box, `random` does not; a batch sharded over
8 devices gives the maps of one device; the same key gives the same maps
whatever the batch and the chunking.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from roar_jax import saliency

KEY = jax.random.key(11)
H = 16
BOX = np.zeros((H, H), bool)
BOX[4:12, 4:12] = True
# 4x4-pixel cells: 16 segments, the box is 4 of them.
SEGMENTS = ((np.arange(H)[:, None] // 4) * 4 +
            np.arange(H)[None, :] // 4).astype(np.int32)
METHODS = ("occlusion", "rise", "lime", "kernel_shap", "xrai", "deeplift",
           "random")
RANDOM_METHODS = ("rise", "lime", "kernel_shap", "random")
# MODEL declares no normalization: the perturbations fill with 0, darker
# than every pixel of the images below.
OPTIONS = dict(rise_masks=256, rise_cells=4, lime_samples=128,
               shap_samples=128, xrai_steps=4, segments=SEGMENTS,
               baseline=0.0)


def _logits(x):
  s = jnp.sum(x * jnp.asarray(BOX[..., None], x.dtype), axis=(1, 2, 3))
  # Scaled so that the class probability RISE scores (logits (a, -a):
  # sigmoid(2a)) runs from about 0.02 (box off) to 0.99 (box on) instead of
  # saturating at 1 for every mask (s is about 200 with the box on).
  a = (s + 0.5 * jnp.tanh(s / 10)) / 50 - 2
  return jnp.stack([a, -a], -1)


MODEL = saliency.Model(logits=_logits,
                       deeplift_logits=saliency.deeplift_logits(_logits))


@pytest.fixture(scope="module")
def box():
  rng = np.random.default_rng(0)
  x = rng.uniform(0.2, 1.0, size=(8, H, H, 3)).astype(np.float32)
  x[:, BOX] += 0.5  # A brighter box, so XRAI's segments follow it.
  maps = saliency.explain_all(MODEL, x, methods=METHODS, key=KEY,
                              target=np.zeros(8, np.int32), **OPTIONS)
  return x, {m: np.asarray(v) for m, v in maps.items()}


def _in_box(maps):
  """Fraction of the top |BOX| positions (channel sum of |map|) in the box."""
  score = np.abs(maps).sum(-1).reshape(len(maps), -1)
  top = np.argsort(-score, axis=1, kind="stable")[:, :BOX.sum()]
  return BOX.ravel()[top].mean(axis=1)


def test_top_positions_fall_in_the_box(box):
  _, maps = box
  for m in METHODS:
    frac = _in_box(maps[m])
    if m == "random":
      assert frac.mean() < 0.4, (m, frac)
    else:
      # XRAI's segments are dilated by 5 pixels (PAIR's setting): on 16x16
      # images they spill over the box's edge.
      assert frac.mean() > 0.6 and frac.min() >= 0.5, (m, frac)
  # DeepLIFT gives nothing outside the box.
  assert np.abs(maps["deeplift"][:, ~BOX]).max() == 0


def test_sharded_batch_gives_the_maps_of_one_device(box):
  x, maps = box
  if jax.device_count() < 8:
    pytest.skip("needs 8 (simulated) devices")
  mesh = jax.make_mesh((8,), ("data",))
  xs = jax.device_put(x, NamedSharding(mesh, P("data")))
  sharded = saliency.explain_all(MODEL, xs, methods=METHODS, key=KEY,
                                 target=np.zeros(8, np.int32), **OPTIONS)
  for m in METHODS:
    assert sharded[m].sharding.spec[0] == "data", m
    np.testing.assert_allclose(sharded[m], maps[m], rtol=1e-4, atol=1e-5,
                               err_msg=m)


def test_same_key_same_maps_whatever_batch_and_chunking(box):
  x, maps = box
  part = saliency.explain_all(MODEL, x[2:5], methods=RANDOM_METHODS, key=KEY,
                              target=np.zeros(3, np.int32),
                              indices=np.arange(2, 5, dtype=np.int32),
                              chunk_size=1, evaluations_per_step=5,
                              **OPTIONS)
  for m in RANDOM_METHODS:
    np.testing.assert_allclose(part[m], maps[m][2:5], rtol=1e-4, atol=1e-5,
                               err_msg=m)
  other = saliency.explain(MODEL, x[:2], method="rise", key=jax.random.key(1),
                           target=np.zeros(2, np.int32), **OPTIONS)
  assert np.abs(np.asarray(other) - maps["rise"][:2]).max() > 1e-3


def test_saliency_grid_shows_the_new_methods(box, tmp_path):
  x, maps = box
  path = tmp_path / "grid.png"
  saliency.visualize.save_grid(str(path), x[:2],
                               {m: maps[m][:2] for m in METHODS})
  assert path.stat().st_size > 0
