"""ROAR/KAR on maps computed elsewhere (`config.explain.maps`): the project's
own gradient maps, written as files, give the native run's rank store and
results.csv; each bad file is refused in one line naming it; the rank stores
key on the maps' content."""

import os
import shutil
import types

import numpy as np
import pytest

import roar_jax
from conftest import load_config
from roar_jax import config as config_pkg
from roar_jax import saliency
from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import external_maps, grid, report
from roar_jax.benchmark.roar import pipeline as roar
from roar_jax.data import errors
from roar_jax.data import pipeline
from roar_jax.data import rank_store


def _toy_config():
  """Two units (gradient, ROAR and KAR at 50%, one seed) of 100 steps."""
  config = load_config("toy")
  with config.unlocked():
    config.explain.estimators = ("gradient",)
    config.roar.thresholds = (0.5,)
    config.roar.num_seeds = 1
    config.train.num_steps = 100
    config.train.checkpoint_every = 100
    config.metrics.with_roar = False  # The grid alone: metrics read ranks.
  return config


def _write_project_maps(native_workdir, folder):
  """The base model's gradient maps of every image, as a user would write
  them: test as .npy in index order, train as .npz with a shuffled index."""
  run = roar_jax.load(native_workdir)
  for split in ("test", "train"):
    maps, index = [], []
    for batch in pipeline.eval_iterator(run.source, run.config.data, split,
                                        global_batch_size=200):
      real = batch["mask"] > 0
      maps.append(np.asarray(saliency.explain(
          run.model, batch["image"][real], method="gradient")))
      index.append(batch["index"][real])
    maps, index = np.concatenate(maps), np.concatenate(index)
    os.makedirs(os.path.join(folder, "gradient"), exist_ok=True)
    base = os.path.join(folder, "gradient", split)
    if split == "test":
      np.save(base + ".npy", maps[np.argsort(index)])
    else:
      order = np.random.default_rng(0).permutation(len(index))
      np.savez(base + ".npz", maps=maps[order], index=index[order])


@pytest.fixture(scope="module")
def both_runs(tmp_path_factory):
  """The native toy grid; the same grid on its gradient maps read from files
  in place of `gradient`'s; and a grid of native `gradient` beside the same
  files under a name of their own, `ext_grad`."""
  native, replaced, named = (str(tmp_path_factory.mktemp(n)) for n in (
      "native", "replaced", "named"))
  folder = str(tmp_path_factory.mktemp("maps"))
  config = _toy_config()
  roar.run(config, native)
  _write_project_maps(native, folder)
  # The base model depends on the data and training fields only: reused.
  for w in (replaced, named):
    shutil.copytree(os.path.join(native, "base"), os.path.join(w, "base"))
  out = roar_jax.run_roar(config, replaced, maps=folder, maps_replace=True)
  assert out["units"] == 2
  renamed = str(tmp_path_factory.mktemp("renamed"))
  shutil.copytree(os.path.join(folder, "gradient"),
                  os.path.join(renamed, "ext_grad"))
  with config.unlocked():
    config.explain.estimators = ("gradient", "ext_grad")
  out = roar_jax.run_roar(config, named, maps=renamed)
  assert out["units"] == 4
  return native, replaced, named, folder


def _results(workdir):
  return {(r["estimator"], r["mode"]): r for r in report.read_csv(
      os.path.join(workdir, "report", "results.csv"))}


def _assert_same_row(a, b):
  assert a.keys() == b.keys()
  for k in a:
    if isinstance(a[k], float):
      assert a[k] == pytest.approx(b[k], abs=1e-6, nan_ok=True), k
    elif k != "estimator":
      assert a[k] == b[k], k


def test_external_maps_give_the_native_rank_store(both_runs):
  native, replaced, named, _ = both_runs
  for split in ("train", "test"):
    mine = rank_store.RankStore(native).read("gradient", split)
    assert mine.shape == ((4000,) if split == "train" else (1000,)) + (32, 32)
    for store, name in ((replaced, "gradient"), (named, "ext_grad"),
                        (named, "gradient")):
      np.testing.assert_array_equal(
          rank_store.RankStore(store).read(name, split), mine)


def test_external_maps_give_the_native_results(both_runs):
  native, replaced, named, _ = both_runs
  mine = _results(native)
  assert sorted(mine) == [("gradient", "kar"), ("gradient", "roar")]
  assert _results(replaced).keys() == mine.keys()
  for key, row in mine.items():
    _assert_same_row(_results(replaced)[key], row)
    # Beside a native estimator, under a name of their own: the same again.
    _assert_same_row(_results(named)[("ext_grad", key[1])], row)
    _assert_same_row(_results(named)[key], row)


def test_rank_store_keys_on_the_maps_content(both_runs, tmp_path):
  _, external, _, folder = both_runs
  config = _toy_config()
  with config.unlocked():
    config.explain.maps, config.explain.maps_replace = folder, True
  before = grid.plan_of(config, external)
  # The rank store depends on the maps, not on the base model.
  assert "base" not in before.ranks["gradient"].record["inputs"]
  # The same arrays elsewhere (another path, a new file time): still current.
  moved = str(tmp_path / "moved")
  shutil.copytree(folder, moved)
  with config.unlocked():
    config.explain.maps = moved
  same = grid.plan_of(config, external)
  assert same.ranks["gradient"].fingerprint == (
      before.ranks["gradient"].fingerprint)
  assert roar.check_current(config, same) is None
  # One changed value: the rank store and everything after it are stale,
  # the base model is not.
  test = os.path.join(moved, "gradient", "test.npy")
  maps = np.load(test)
  maps[3, 4, 5, 0] += 1.0
  np.save(test, maps)
  after = grid.plan_of(config, external)
  assert after.base.fingerprint == before.base.fingerprint
  assert after.ranks["gradient"].fingerprint != (
      before.ranks["gradient"].fingerprint)
  assert all(after.results[u].fingerprint != before.results[u].fingerprint
             for u in before.results)
  with pytest.raises(workdir_lib.WorkdirError, match="explain.maps.gradient"):
    roar.check_current(config, after)


# Validation: a small fake dataset of 6 train and 4 test 8x8 RGB images.

_SOURCE = types.SimpleNamespace(info=types.SimpleNamespace(
    num_examples={"train": 6, "test": 4}, image_shape=(8, 8, 3)))


def _config(folder, estimators=("captum_ig", "random")):
  config = load_config("toy")
  with config.unlocked():
    config.data.image_size = 8
    config.explain.estimators = estimators
    config.explain.maps = str(folder)
  return config


def _write(folder, method="captum_ig", **splits):
  """Good maps for both splits, replaced by `splits` ({split: array})."""
  os.makedirs(folder / method, exist_ok=True)
  rng = np.random.default_rng(0)
  for split, num in _SOURCE.info.num_examples.items():
    maps = splits.get(split, rng.normal(size=(num, 8, 8, 3)).astype(
        np.float32))
    if isinstance(maps, dict):
      np.savez(folder / method / f"{split}.npz", **maps)
    else:
      np.save(folder / method / f"{split}.npy", maps)


def test_good_maps_are_looked_up_by_index(tmp_path):
  train = np.arange(6 * 64, dtype=np.float32).reshape(6, 8, 8)
  order = np.array([3, 0, 5, 1, 4, 2])
  _write(tmp_path, train={"maps": train[order], "index": order})
  maps = external_maps.Maps(_config(tmp_path), _SOURCE)
  assert maps.methods == ("captum_ig",)
  got = maps.lookup("captum_ig", "train", [2, 5, 0])
  np.testing.assert_array_equal(got, train[[2, 5, 0]][..., None])


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 8, 7, 3), np.float32),
     r"test\.npy: shape \(4, 8, 7, 3\); expected \[N, 8, 8, 3\] or "
     r"\[N, 8, 8\]"),
    (np.zeros((4, 8, 8, 1), np.float32), r"test\.npy: shape \(4, 8, 8, 1\)"),
    (np.zeros((5, 8, 8, 3), np.float32),
     r"test\.npy: 5 maps; the split has 4 images"),
    (np.zeros((4, 8, 8, 3), np.int32),
     r"test\.npy: dtype int32; expected floating-point maps"),
    (np.where(np.arange(4)[:, None, None, None] == 2, np.nan,
              np.zeros((4, 8, 8, 3), np.float32)),
     r"test\.npy: NaN or inf in the map of row 2"),
    ({"maps": np.zeros((4, 8, 8), np.float32), "index": np.array([0, 1, 1, 3])},
     r"test\.npz: index misses 1 of the split's images \(e\.g\. \[2\]\)"),
    ({"maps": np.zeros((4, 8, 8), np.float32), "index": np.array([0, 1, 2, 4])},
     r"test\.npz: index entries must lie in \[0, 4\)"),
    ({"maps": np.zeros((4, 8, 8), np.float32)}, None),  # Row i = image i.
])
def test_each_bad_file_is_refused_in_one_line(tmp_path, bad, message):
  _write(tmp_path, test=bad)
  if message is None:
    external_maps.Maps(_config(tmp_path), _SOURCE)
    return
  with pytest.raises(errors.DataError, match=message) as e:
    external_maps.Maps(_config(tmp_path), _SOURCE)
  assert "\n" not in str(e.value)
  assert str(tmp_path / "captum_ig") in str(e.value)


def test_pixel_maps_need_pixel_granularity(tmp_path):
  _write(tmp_path, test=np.zeros((4, 8, 8), np.float32))
  config = _config(tmp_path)
  with config.unlocked():
    config.explain.granularity = "value"
  with pytest.raises(errors.DataError, match=r"test\.npy: \[N, H, W\] maps "
                     "rank pixels.*give \\[N, 8, 8, 3\\] maps"):
    external_maps.Maps(config, _SOURCE)


def test_a_missing_split_is_named(tmp_path):
  _write(tmp_path)
  os.remove(tmp_path / "captum_ig" / "train.npy")
  with pytest.raises(errors.DataError, match=r"captum_ig/train\.npy: no train "
                     r"maps for 'captum_ig' \(expected one of"):
    external_maps.Maps(_config(tmp_path), _SOURCE)


def test_config_validation(tmp_path):
  _write(tmp_path)
  # An external name passes where an unknown one would not.
  config_pkg.validate(_config(tmp_path), "roar")
  with pytest.raises(config_pkg.ConfigError, match="unknown estimator "
                     "'captum_gi'"):
    config_pkg.validate(_config(tmp_path, ("captum_ig", "captum_gi")), "roar")
  # A built-in name is replaced only when asked.
  _write(tmp_path, method="gradient")
  config = _config(tmp_path, ("gradient", "random"))
  with pytest.raises(config_pkg.ConfigError, match=r"\['gradient'\] are "
                     "built-in estimators; rename the folders"):
    config_pkg.validate(config, "roar")
  with config.unlocked():
    config.explain.maps_replace = True
  config_pkg.validate(config, "roar")
  with pytest.raises(config_pkg.ConfigError, match="no folder named after an "
                     "estimator"):
    config_pkg.validate(_config(tmp_path, ("random",)), "roar")
  with pytest.raises(config_pkg.ConfigError, match="--mode=sanity recomputes "
                     "the maps of randomized models"):
    config_pkg.validate(_config(tmp_path), "sanity")
