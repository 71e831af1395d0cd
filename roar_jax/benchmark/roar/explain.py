"""The explain stage: saliency maps of every train and test image -> rank store.

The trained base model explains every image of both splits with each
configured estimator; each map becomes a removal order quantized to 100 levels
(`saliency.rank`) and is stored per estimator and split in shards
(`data.RankStore`). A shard is written atomically once all its images are
ranked, so an interrupted stage resumes shard by shard. With several JAX
processes, each process explains its own slice of a split and writes its own
shards.

The control `oracle` (toy data only) ranks the generator's ground-truth mask
first, the other pixels after it in a random order: the best ranking there is.
What every estimator name means is `estimator_names.py`'s; the matched
controls `random_smooth.<e>` are ranked last (`matched_controls.py`).

Maps computed elsewhere (`config.explain.maps`, `external_maps.py`) enter
here, in place of the model's: each batch's images look up their maps by
index, and the same `saliency.rank` turns them into the same rank store.
"""

import contextlib
import math
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from roar_jax import progress_eta
from roar_jax import saliency
from roar_jax import training
from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import estimator_names as names
from roar_jax.benchmark.roar import external_maps
from roar_jax.benchmark.roar import grid
from roar_jax.benchmark.roar import matched_controls
from roar_jax.benchmark.roar import saliency_figure
from roar_jax.data import pipeline
from roar_jax.data import preprocess
from roar_jax.data import rank_store as rank_store_lib
from roar_jax.data import sources
from roar_jax.data import synthetic

ORACLE = names.ORACLE


def explainable(config, module, variables) -> saliency.Model:
  """The model as the estimators see it, declaring `config.data`'s
  normalization: integrated gradients and the perturbation methods start
  from the black image, superpixels are computed in pixel space."""
  mean, std = preprocess.mean_std(config.data, len(config.data.mean))
  return saliency.explainable(module, variables, pixel_mean=mean,
                              pixel_std=std)


def black_image(config) -> np.ndarray:
  """The black (0) pixel in the model's input space, per channel: -mean/std."""
  return saliency.black_image(
      *preprocess.mean_std(config.data, len(config.data.mean)))


def explain_options(config) -> dict[str, Any]:
  """The estimator options of `config.explain`, as `saliency.explain_all`
  takes them (the baseline, the black image, comes from the model that
  `explainable` builds)."""
  ec = config.explain
  options = {"num_samples": ec.num_samples, "noise_scale": ec.noise_scale,
             "ig_steps": ec.ig_steps,
             **{k: v for k, v in ec.methods.items() if v is not None}}
  if ec.chunk_size:
    options["chunk_size"] = ec.chunk_size
  if any(names.maps_method(e) == names.SMOOTH for e in ec.estimators):
    options["smooth_sigma"] = ec.smooth_sigma
  if any(names.segmented(e) for e in ec.estimators):
    # Superpixels are computed on the images in pixel space. The model of
    # `explainable` declares the same statistics; they stay here because the
    # sanity records' provenance lists these options.
    options["pixel_mean"] = tuple(config.data.mean)
    options["pixel_std"] = tuple(config.data.std)
  return options


def deepshap_references(config, source) -> np.ndarray:
  """`references=` of the methods that read it (`saliency.reads_references`:
  DeepSHAP, Expected Gradients): the first `explain.num_references` training
  images, as the model sees them."""
  batch = next(iter(pipeline.eval_iterator(
      source, config.data, "train",
      global_batch_size=config.explain.num_references)))
  return batch["image"][batch["mask"] > 0]


def _oracle_maps(config, split: str, indices: np.ndarray, shape) -> np.ndarray:
  """Ground-truth mask plus a small random score that orders the rest."""
  masks = synthetic.toy_masks(config.data.toy, split)[indices]
  # The noise of image i depends on (seed, split, i) alone, so the ranking does
  # not change with the batch an image falls in.
  noise = np.stack([
      np.random.default_rng([config.seed, split == "train", int(i)]).random(
          masks.shape[1:]) for i in indices]) if len(indices) else masks
  maps = masks.astype(np.float32) + 0.5 * noise.astype(np.float32)
  return np.broadcast_to(maps[..., None], shape)


def _local_rows(array: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in order."""
  shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
  rows, seen = [], set()
  for s in shards:
    start = s.index[0].start or 0
    if start not in seen:  # Replicas of the same rows appear once.
      seen.add(start)
      rows.append(np.asarray(s.data))
  return np.concatenate(rows)


def run(config, workdir, *, source=None, plan=None) -> dict[str, Any]:
  """Ranks every image of both splits with every configured estimator.

  Args:
    config: the experiment config (`config.explain`).
    workdir: the experiment workdir; the base model is read from `base/`, the
      rank store written to `ranks/`, the figure to `report/saliency.png`.
    source: the data Source (default: `config.data`).
    plan: the run's artifacts (`grid.plan_of`); every rank store records its
      provenance before its first shard is written.

  Returns:
    {'images_per_s': float, 'written_shards': int, 'gradient_passes': per
     image, all estimators together, 'gradient_passes_alone': per image, each
     estimator computed on its own}.
  """
  source = source or sources.get_source(config.data)
  wd = workdir_lib.as_workdir(workdir)
  plan = plan or grid.plan_of(config, workdir)
  module, variables = training.load_model(config, wd.base, source=source)
  if jax.process_index() == 0:
    for est in config.explain.estimators:
      if not workdir_lib.exists(plan.ranks[est].path):
        plan.ranks[est].write()
  stage = _Stage(config, wd, source, explainable(config, module, variables))
  passes = _log_gradient_passes(config, stage.model, stage.methods,
                                source, stage.options)
  for split_id, split in enumerate(("test", "train")):
    stage.explain_split(split_id, split)
  if stage.matched:
    if stage.nproc > 1:  # Every process reads the others' test shards.
      multihost_utils.sync_global_devices("explain: estimators ranked")
    context = matched_controls.Context(
        stage.store, stage.model, stage.key, int(source.info.image_shape[-1]),
        config.explain.granularity, config.explain.batch_size)
    for name in stage.matched:
      # Matching the sigma and ranking both splits takes a while.
      with progress_eta.timed(f"writing rank store for {name} ("
                              f"{_num_shards(stage.shards)} shards)"):
        stage.written += matched_controls.rank(context, name, stage.shards)
  rate = stage.images_done / max(stage.elapsed, 1e-9)
  if stage.images_done:
    logging.info("explain: %d images ranked by %d estimators, %.1f images/s",
                 stage.images_done, len(stage.estimators), rate)
  return {"images_per_s": rate, "written_shards": stage.written, **passes}


class _Stage:
  """The explain stage's state across splits: model, store, counters."""

  def __init__(self, config, wd: workdir_lib.Workdir, source, model):
    self.config, self.wd, self.source, self.model = config, wd, source, model
    ec = config.explain
    self.mesh = training.create_mesh()
    self.store = rank_store_lib.RankStore(wd.root)
    self.matched = tuple(e for e in ec.estimators
                         if names.parse(e).matched_to is not None)
    self.estimators = tuple(e for e in ec.estimators if e not in self.matched)
    # Checked against the dataset before any image is explained.
    self.external = external_maps.Maps(config, source)
    self.external_estimators = tuple(
        e for e in self.estimators
        if names.maps_method(e) in self.external.methods)
    self.model_estimators = tuple(
        e for e in self.estimators if names.maps_method(e) is not None
        and e not in self.external_estimators)
    # Each map is computed once, however many rankings it serves.
    self.methods = tuple(dict.fromkeys(names.maps_method(e)
                                       for e in self.model_estimators))
    self.options = explain_options(config)
    if any(saliency.reads_references(m) for m in self.methods):
      self.options["references"] = deepshap_references(config, source)
    self.key = jax.random.fold_in(jax.random.key(config.seed), 7)
    self.pid, self.nproc = jax.process_index(), jax.process_count()
    local_batch = ec.batch_size // self.nproc
    if ec.shard_size % local_batch:
      raise ValueError(
          f"config.explain.shard_size={ec.shard_size} must be a multiple of "
          f"the per-process batch size {local_batch}, so that no batch "
          "straddles two shards")
    self.written, self.images_done, self.elapsed = 0, 0, 0.0
    # Per split: (number of shards, this process's shard numbers).
    self.shards: dict[str, tuple[int, list[int]]] = {}
    self.visualized = False

  def explain_split(self, split_id: int, split: str):
    """Ranks this process's slice of `split`, shard by shard."""
    ec = self.config.explain
    num = self.source.info.num_examples[split]
    local = max(math.ceil(num / self.nproc), 1)
    per_process = max(math.ceil(local / ec.shard_size), 1)
    num_shards = per_process * self.nproc
    first = self.pid * per_process
    self.shards[split] = (num_shards, list(range(first, first + per_process)))
    todo = [s for s in range(first, first + per_process)
            if not all(self.store.has_shard(e, split, s, num_shards)
                       for e in self.estimators)]
    if not todo:
      logging.info("explain %s: every shard already written", split)
      return
    batches = pipeline.eval_iterator(
        self.source, self.config.data, split, global_batch_size=ec.batch_size,
        process_index=self.pid, process_count=self.nproc)
    pending = {e: [] for e in self.estimators}
    pending_idx, shard = [], first
    flush = lambda s: _flush(self.store, self.estimators, split, s,  # noqa: E731
                             num_shards, todo, pending, pending_idx,
                             ec.shard_size)
    split_key = jax.random.fold_in(self.key, split_id)
    # A bar on a terminal; without one, a log line with the time left every
    # 30 s (`progress_eta.Bar`).
    with progress_eta.Bar(local, f"explain {split}", noun="image",
                          unit="img") as bar:
      for batch in batches:
        real = batch["mask"] > 0
        if shard in todo and real.any():
          self._rank_batch(split, batch, real, split_key, pending)
        pending_idx.append(batch["index"][real])
        rate = self.images_done / max(self.elapsed, 1e-9)
        bar.update(int(real.sum()), f"{rate:.1f} images/s")
        if sum(len(i) for i in pending_idx) >= ec.shard_size:
          self.written += flush(shard)
          shard += 1
    # The split's last shards are written after its last batch.
    rest = range(shard, first + per_process)
    writes = sum(s in todo for s in rest)
    which = ", ".join(self.estimators)
    with (progress_eta.timed(f"writing rank store for {which} ({split}, "
                             f"{writes} shards)") if writes
          else contextlib.nullcontext()):
      for s in rest:
        self.written += flush(s)

  def _rank_batch(self, split, batch, real, split_key, pending):
    """Explains one batch with every estimator; appends its levels."""
    ec = self.config.explain
    start = time.time()
    images = training.to_global({"image": batch["image"],
                                 "index": batch["index"].astype(np.int32)},
                                self.mesh)
    maps = saliency.explain_all(
        self.model, images["image"], methods=self.methods,
        key=split_key, indices=images["index"], target=None,
        **self.options) if self.methods else {}
    for e in self.model_estimators:
      levels = saliency.rank(maps[names.maps_method(e)], granularity=ec.granularity,
                             transform=names.transform_for(ec, e),
                             blur_sigma=names.blur_sigma(ec, e))
      pending[e].append(_local_rows(levels)[real])
    for e in self.external_estimators:
      given = self.external.lookup(names.maps_method(e), split,
                                   batch["index"][real])
      pending[e].append(np.asarray(saliency.rank(
          given, granularity=ec.granularity,
          transform=names.transform_for(ec, e),
          blur_sigma=names.blur_sigma(ec, e))))
    if ORACLE in self.estimators:
      oracle = _oracle_maps(self.config, split, batch["index"][real],
                            batch["image"][real].shape)
      pending[ORACLE].append(np.asarray(saliency.rank(
          oracle, granularity=ec.granularity, transform="abs")))
    self.elapsed += time.time() - start
    self.images_done += int(real.sum())
    if (split == "test" and not self.visualized and self.model_estimators
        and self.pid == 0):
      _visualize(self.config, self.wd.root, batch, maps, real,
                 self.source.info.class_names)
      self.visualized = True


def _num_shards(shards: dict[str, tuple[int, list[int]]]) -> int:
  """How many shards this process writes per estimator, both splits."""
  return sum(len(mine) for _, mine in shards.values())


def _log_gradient_passes(config, model, estimators, source, options
                         ) -> dict[str, int]:
  """The explain stage's cost in gradient passes per image, shared work
  counted once, and what computing each estimator alone would cost."""
  if not estimators:
    return {"gradient_passes": 0, "gradient_passes_alone": 0}
  shape = (preprocess.image_size_of(config.data),) * 2 + (
      int(source.info.image_shape[-1]),)
  shared = saliency.gradient_passes(model, estimators, shape, **options)
  alone = sum(saliency.gradient_passes(model, (e,), shape, **options)
              for e in estimators)
  logging.info("explain: %d gradient passes per image for %d estimators (%d "
               "if each were computed alone)", shared, len(estimators), alone)
  return {"gradient_passes": shared, "gradient_passes_alone": alone}


def _flush(store, estimators, split, shard, num_shards, todo, pending,
           pending_idx, shard_size) -> int:
  """Writes the first `shard_size` pending rows as `shard`; keeps the rest."""
  idx = np.concatenate(pending_idx) if pending_idx else np.zeros(0, np.int64)
  head_idx, rest_idx = idx[:shard_size], idx[shard_size:]
  pending_idx[:] = [rest_idx] if len(rest_idx) else []
  count = 0
  for e in estimators:
    rows = np.concatenate(pending[e]) if pending[e] else None
    if shard in todo:
      store.write_shard(e, split, shard, num_shards, head_idx,
                        rows[:shard_size])
      count += 1
    pending[e] = [rows[shard_size:]] if rows is not None and len(
        rows) > shard_size else []
  return count


def _visualize(config, workdir, batch, maps, real, class_names=None):
  """saliency.png and .pdf of the batch's first images (`saliency_figure`)."""
  n = min(int(config.explain.num_visualize), int(real.sum()))
  if n <= 0:
    return
  grid = {e: np.asarray(_local_rows(m))[real][:n] for e, m in maps.items()}
  saliency_figure.write(config, workdir_lib.as_workdir(workdir),
                        batch["image"][real][:n], grid,
                        labels=batch["label"][real][:n],
                        indices=batch["index"][real][:n],
                        class_names=class_names)
