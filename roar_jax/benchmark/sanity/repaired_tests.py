"""The repaired randomization tests in the sanity stage (`repaired.py`).

- bottom_up: the layers re-initialized from the input up, cumulatively;
  each step's maps against the trained model's, with the paper's metrics
  and Quantus MPRT's `spearman_flat` (`comparisons.randomization_test`);
- emprt: the complexity (histogram entropy) of each estimator's maps on the
  trained and the fully randomized model, and its relative rise;
- smprt: the bottom-up test on denoised maps (each the mean of the
  estimator's maps over `smprt_nr_samples` noisy copies of the image, the
  last one clean), with the same metrics;
- random_logit: the trained model's maps of the explained class against
  its maps of one other class drawn uniformly, with the paper's metrics
  and Quantus RandomLogit's `ssim_flat`.

The explained class follows `config.sanity.target`. The sMPRT noise is drawn
once per test image (`settings.SMOOTH_STREAM`) and used for every model
compared, as the SmoothGrad noise is: Quantus draws new noise for every
model, so its step 0 ("original") is below 1 by the noise alone, ours is 1.
Every (test, estimator) gives one record (`comparisons.write_records`).
"""

import dataclasses
import functools
import time
import zlib
from typing import Any

import jax
import numpy as np
from absl import logging

from roar_jax.benchmark.sanity import comparisons
from roar_jax.benchmark.sanity import maps as maps_lib
from roar_jax.benchmark.sanity import randomization
from roar_jax.benchmark.sanity import repaired
from roar_jax.benchmark.sanity import settings
from roar_jax.benchmark.sanity import similarity

TESTS = ("bottom_up", "emprt", "smprt", "random_logit")


def _targets(ctx, module, variables) -> np.ndarray:
  """The classes explained on the clean images: the labels, or the top
  classes of the model being explained."""
  if ctx.config.sanity.target == "predicted":
    return maps_lib.predictions(module, variables, ctx.images)
  return np.asarray(ctx.images["label"])


@dataclasses.dataclass
class SmoothedContext(comparisons.Context):
  """A Context whose estimators' maps are sMPRT's denoised maps."""
  normals: Any = None  # [S - 1, N, H, W, C] standard normal draws.
  magnitude: float = 0.1

  def explain(self, module, variables, names):
    explain_at = maps_lib.explainer(
        self.config, module, variables, self.images, names,
        target=_targets(self, module, variables))
    out = repaired.smooth(explain_at, self.images["image"], self.normals,
                          self.magnitude)
    # The controls ignore the model; their maps are the trained step's.
    return {**{k: v.astype(np.float32) for k, v in out.items()},
            **self.control_maps}


def smooth_normals(config, images, nr_samples: int) -> np.ndarray:
  """sMPRT's draws [S - 1, N, H, W, C]: image i's from its test index."""
  seed = int(config.seed)
  return np.stack([
      np.random.default_rng([seed, settings.SMOOTH_STREAM, int(i)])
      .standard_normal((nr_samples - 1, *images["image"].shape[1:]))
      .astype(np.float32) for i in images["index"]], axis=1)


def bottom_up_test(ctx, pending) -> dict[str, dict[str, Any]]:
  """The layers re-initialized from the input up; Quantus MPRT's
  `spearman_flat` beside the paper's metrics."""
  flat = maps_lib.Comparer(ctx.config, ctx.comparer.reference, ctx.images,
                           extra={repaired.SPEARMAN_FLAT:
                                  repaired.FlatSpearman()})
  return comparisons.randomization_test(
      dataclasses.replace(ctx, comparer=flat), "bottom_up", pending)


def smprt_test(ctx, pending) -> dict[str, dict[str, Any]]:
  """The bottom-up test on denoised maps (trained ones smoothed too)."""
  opts = settings.repaired_options(ctx.config)
  normals = smooth_normals(ctx.config, ctx.images, opts.smprt_nr_samples)
  sctx = SmoothedContext(**{f.name: getattr(ctx, f.name)
                            for f in dataclasses.fields(ctx)},
                         normals=normals,
                         magnitude=opts.smprt_noise_magnitude)
  maps = sctx.explain(ctx.module, ctx.variables, pending)
  reference = {e: maps[e] for e in pending}
  sctx.comparer = maps_lib.Comparer(
      ctx.config, reference, ctx.images,
      extra={repaired.SPEARMAN_FLAT: repaired.FlatSpearman()})
  return comparisons.randomization_test(sctx, "smprt", pending)


def _summary_row(where, est, reference, metric, values, floor):
  s, f = similarity.summarize(values), similarity.summarize(floor)
  return {**where, "estimator": est, "reference": reference,
          "metric": metric, "mean": s["mean"], "std": s["std"], "n": s["n"],
          "floor_mean": f["mean"], "floor_std": f["std"]}


def _emprt_rows(ctx, maps, names, where0, where1, n_bins, controls=()):
  """eMPRT's rows of `names` (the estimators, or the controls against
  every estimator): the complexity of the maps on the original and the
  randomized model, and its rise from the estimator's trained maps. A
  control ignores the model: its maps are the same at both steps. The
  floor: the same for an N(0, 1) map in place of the randomized maps."""
  rows = []
  for name in names:
    for est in (controls or (name,)):
      ref = ctx.comparer.reference[est]
      # Seeded as the Comparer's floor maps: by the estimator's name.
      noise = similarity.random_maps(ref.shape, [
          int(ctx.config.seed), settings.FLOOR_STREAM,
          zlib.crc32(est.encode())])
      floor = repaired.emprt(ref, noise, n_bins)
      e = repaired.emprt(ref, maps[name], n_bins)
      first = e["randomized"] if controls else e["original"]
      rows += [
          _summary_row(where0, name, est, repaired.COMPLEXITY, first,
                       floor["original"]),
          _summary_row(where1, name, est, repaired.COMPLEXITY,
                       e["randomized"], floor["randomized"]),
          _summary_row(where1, name, est, repaired.EMPRT, e["rise"],
                       floor["rise"])]
  return rows


def emprt_test(ctx, pending) -> dict[str, dict[str, Any]]:
  """The complexity rise from the trained to the fully randomized model."""
  sc = ctx.config.sanity
  names = randomization.layer_names(ctx.module, ctx.variables)
  layers = repaired.bottom_up_steps(names)[-1]
  key = jax.random.fold_in(jax.random.key(int(ctx.config.seed)),
                           settings.REINIT_STREAM)
  new = randomization.randomize(
      ctx.module, ctx.variables, layers, key, init=sc.init,
      input_shape=tuple(ctx.images["image"].shape[1:]),
      init_std=sc.init_std, reset_batch_stats=sc.reset_batch_stats)
  maps = ctx.explain(ctx.module, new, pending)
  trained_pred, accuracy0 = ctx.accuracy(ctx.module, ctx.variables)
  pred, accuracy = ctx.accuracy(ctx.module, new)
  base = {"test": "emprt", "model": ctx.plan.name, "layers": ""}
  where0 = {**base, "step": 0, "step_name": "original",
            "model_accuracy": accuracy0, "same_prediction": 1.0}
  where1 = {**base, "step": 1, "step_name": "randomized",
            "layers": "+".join(layers), "model_accuracy": accuracy,
            "same_prediction": float(np.mean(pred == trained_pred))}
  n_bins = settings.repaired_options(ctx.config).emprt_n_bins
  rows = _emprt_rows(ctx, maps, pending, where0, where1, n_bins)
  control_rows = _emprt_rows(ctx, maps, ctx.controls, where0, where1, n_bins,
                             controls=tuple(pending))
  steps = [{"step": 0, "name": "original", "layers": []},
           {"step": 1, "name": "randomized", "layers": list(layers)}]
  original = {**{e: ctx.comparer.reference[e] for e in pending},
              **ctx.control_maps}
  visual = maps_lib.visual(ctx.images, {"original": original,
                                        "randomized": maps},
                           sc.num_visualize)
  return comparisons.write_records(ctx, "emprt", pending, rows, control_rows,
                                   steps, visual, n_bins=n_bins)


def random_logit_test(ctx, pending) -> dict[str, dict[str, Any]]:
  """Maps of the explained class against a random other class's."""
  sc = ctx.config.sanity
  classes = _targets(ctx, ctx.module, ctx.variables)
  num_classes = int(ctx.source.info.num_classes)
  draws = [np.random.default_rng([int(ctx.config.seed),
                                  settings.LOGIT_STREAM, int(i)])
           .integers(0, num_classes - 1) for i in ctx.images["index"]]
  other = repaired.other_classes(classes, num_classes, np.array(draws))
  maps = maps_lib.explain(ctx.config, ctx.module, ctx.variables, ctx.images,
                          pending, target=other)
  window = settings.repaired_options(ctx.config).ssim_window
  comparer = maps_lib.Comparer(
      ctx.config, ctx.comparer.reference, ctx.images,
      extra={repaired.SSIM_FLAT: functools.partial(repaired.ssim_flat,
                                                   win_size=window)})
  _, accuracy = ctx.accuracy(ctx.module, ctx.variables)
  where = {"test": "random_logit", "model": ctx.plan.name, "step": 1,
           "step_name": "other class", "layers": "",
           "model_accuracy": accuracy}
  rows = comparer.rows(maps, pending, where)
  control_rows = comparer.control_rows(ctx.control_maps, ctx.controls,
                                       pending, where)
  steps = [{"step": 0, "name": "explained class", "layers": []},
           {"step": 1, "name": "other class", "layers": []}]
  original = {**{e: ctx.comparer.reference[e] for e in pending},
              **ctx.control_maps}
  visual = maps_lib.visual(ctx.images, {"explained class": original,
                                        "other class": {**maps,
                                                        **ctx.control_maps}},
                           sc.num_visualize)
  return comparisons.write_records(
      ctx, "random_logit", pending, rows, control_rows, steps, visual,
      classes={"explained": classes.tolist(), "other": other.tolist()})


_RUN = {"bottom_up": bottom_up_test, "emprt": emprt_test,
        "smprt": smprt_test, "random_logit": random_logit_test}


def run_test(ctx, test: str, pending) -> dict[str, dict[str, Any]]:
  """Any test of `settings.TESTS` for the pending estimators (the paper's
  three through `comparisons.run_test`)."""
  if test not in _RUN:
    return comparisons.run_test(ctx, test, pending)
  t0 = time.time()
  records = _RUN[test](ctx, pending)
  logging.info("%s %s: %d estimators done in %.1f s", ctx.plan.name, test,
               len(pending), time.time() - t0)
  return records
