"""The sanity checks' figures: similarity curves, bar charts and map grids.

Every figure is a grid of panels (`NCOLS` columns, one panel per metric and
model) with text readable at 100 dpi, a one-line title (the test, the seed
and the number of images; the re-initialization, BatchNorm handling and
explained class are in sanity.md beside it), and is written as PNG and PDF.
The controls appear in each panel of the randomization figures as one
shaded band: at each step, the range (min to max) of every control's
similarity to every estimator's trained maps; an estimator's curve below
the band is less similar to its trained maps than any model-free map. The
data test's bars mark the best control per estimator instead.
"""

import io
import math
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np  # noqa: E402

from roar_jax import workdir as workdir_lib  # noqa: E402
from roar_jax.benchmark.sanity import repaired  # noqa: E402
from roar_jax.benchmark.sanity import similarity  # noqa: E402
from roar_jax.benchmark.sanity import verdicts  # noqa: E402

NCOLS = 3
PANEL = (4.4, 3.4)  # Inches per panel.
METRIC_TITLES = {
    "spearman_abs": "Spearman, absolute values",
    "spearman_signed": "Spearman, signed",
    "ssim": "SSIM (window 5)",
    "hog": "HOG correlation",
    "spearman_abs_fg": "Spearman abs., pixels != baseline",
    "spearman_signed_fg": "Spearman signed, pixels != baseline",
    "spearman_flat": "Spearman |map|, every entry (Quantus MPRT)",
    "ssim_flat": "SSIM of flattened maps (Quantus)",
    "complexity": "histogram entropy (nats)",
    "emprt": "eMPRT: relative entropy rise",
}
TEST_TITLES = {
    "cascading": "Cascading randomization (from the logits down, cumulative)",
    "independent": "Independent randomization (one layer, the rest trained)",
    "data": "Data randomization (model trained on permuted labels)",
    "bottom_up": "Bottom-up randomization (from the input up, cumulative)",
    "emprt": "eMPRT (entropy rise under full randomization)",
    "smprt": "sMPRT (bottom-up, on denoised maps)",
    "random_logit": "Random logit (maps of another class)",
}
CONTROL_LABEL = "controls (min-max over controls and estimators)"
CONTROL_STYLE = {"facecolor": "0.8", "edgecolor": "0.45", "hatch": "///",
                 "linewidth": 0.0, "alpha": 0.6}
FLOOR_LABEL = "random-map floor"


def settings_line(meta: Mapping[str, Any]) -> str:
  """The settings a result depends on, in one line for a figure title."""
  return (f"re-init: {meta['init_description']}; BatchNorm statistics: "
          f"{meta['batch_norm']}; class explained: "
          f"{meta['target_description']}; seed {meta['seed']}; "
          f"{meta['num_images']} test images")


def metrics_in(rows) -> list[str]:
  present = {r["metric"] for r in rows}
  order = (similarity.METRICS + similarity.FOREGROUND_METRICS
           + repaired.METRICS)
  return [m for m in order if m in present]


def pdf_path(path: str) -> str:
  """The PDF beside a figure's PNG path."""
  return path[:-len(".png")] + ".pdf" if path.endswith(".png") else (
      path + ".pdf")


def save(fig, path: str):
  """Writes the figure at `path` (PNG) and `pdf_path(path)`."""
  for p in (path, pdf_path(path)):
    workdir_lib.save_figure(fig, p, dpi=100, bbox_inches="tight")
  plt.close(fig)


def _by_model(records, test):
  return {r["model"]: r for r in records if r["test"] == test}


def short_settings(metas) -> str:
  """'seed 0, 16 test images' over the records' settings, for a one-line
  title (several values joined by '/')."""
  seeds = "/".join(str(s) for s in sorted({m["seed"] for m in metas}))
  images = "/".join(str(n) for n in sorted({m["num_images"] for m in metas}))
  return f"seed {seeds}, {images} test images"


def _titles(recs) -> str:
  return short_settings([r["meta"] for r in recs.values()])


def _colors(records) -> dict[str, Any]:
  """One color per estimator, the same in every panel and figure."""
  names = list(dict.fromkeys(row["estimator"] for r in records
                             for row in r["rows"]))
  cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  return {n: cycle[i % len(cycle)] for i, n in enumerate(names)}


def _grid(recs, metrics):
  """A figure with a block of panels per model, NCOLS wide; the axes by
  (model, metric)."""
  per_model = math.ceil(len(metrics) / NCOLS)
  ncols = min(NCOLS, len(metrics))
  nrows = per_model * len(recs)
  fig, axes = plt.subplots(nrows, ncols, squeeze=False,
                           figsize=(PANEL[0] * ncols + 2.0,
                                    PANEL[1] * nrows + 1.6))
  out = {}
  for i, model in enumerate(sorted(recs)):
    for j, metric in enumerate(metrics):
      out[(model, metric)] = axes[i * per_model + j // ncols, j % ncols]
    for j in range(len(metrics), per_model * ncols):
      axes[i * per_model + j // ncols, j % ncols].axis("off")
  return fig, out


def _finish(ax, model, metric, ylabel):
  ax.axhline(0.0, color="k", lw=0.5)
  ax.set_ylim(-0.5, 1.05)
  ax.grid(alpha=0.3)
  ax.set_title(f"{model}: {METRIC_TITLES.get(metric, metric)}", fontsize=10)
  ax.set_ylabel(ylabel, fontsize=9)
  ax.tick_params(labelsize=9)


def control_band(rec, metric) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(steps, low, high): at each step, the least and the most similar
  control map over every control and every estimator's trained maps (NaN
  means left out); empty arrays without control rows."""
  by_step: dict[int, list[float]] = {}
  for r in rec.get("control_rows", ()):
    if r["metric"] == metric and not math.isnan(r["mean"]):
      by_step.setdefault(r["step"], []).append(r["mean"])
  steps = sorted(by_step)
  return (np.array(steps, float), np.array([min(by_step[s]) for s in steps]),
          np.array([max(by_step[s]) for s in steps]))


def _curves(ax, rec, metric, colors):
  """A line per estimator (mean over the images), the control band and the
  random-map floor."""
  rows = [r for r in rec["rows"] if r["metric"] == metric]
  floors = []
  for est in dict.fromkeys(r["estimator"] for r in rows):
    pts = sorted((r["step"], r["mean"]) for r in rows
                 if r["estimator"] == est)
    xs, ys = (np.array(v, float) for v in zip(*pts))
    ax.plot(xs, ys, marker="o", ms=3, label=est, color=colors[est], zorder=3)
    floor = next(r for r in rows if r["estimator"] == est)
    floors.append((floor["floor_mean"], floor["floor_std"]))
  steps, low, high = control_band(rec, metric)
  if len(steps):
    ax.fill_between(steps, low, high, label=CONTROL_LABEL, zorder=1,
                    **CONTROL_STYLE)
  if floors:
    ax.axhspan(min(m - s for m, s in floors), max(m + s for m, s in floors),
               color="grey", alpha=0.25, label=FLOOR_LABEL, zorder=0)


def plot_randomization(path: str, records, test: str) -> bool:
  """Writes `randomization_figure` at `path` (PNG) and as PDF.

  Returns:
    Whether `records` hold the test (else nothing is written).
  """
  fig = randomization_figure(records, test)
  if fig is None:
    return False
  save(fig, path)
  return True


def randomization_figure(records, test: str):
  """Similarity vs. layers randomized: a panel per (model, metric); None
  when `records` do not hold `test`."""
  recs = _by_model(records, test)
  if not recs:
    return None
  metrics = metrics_in([row for r in recs.values() for row in r["rows"]])
  colors = _colors(recs.values())
  fig, axes = _grid(recs, metrics)
  for (model, metric), ax in axes.items():
    rec = recs[model]
    steps = [s["name"] for s in rec["steps"]]
    _curves(ax, rec, metric, colors)
    ax.set_xticks(range(len(steps)))
    ax.set_xticklabels(steps, rotation=45, ha="right", fontsize=8)
    _finish(ax, model, metric, "similarity to the trained maps")
  handles, labels = next(iter(axes.values())).get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", fontsize=9,
             ncol=min(6, len(labels)), bbox_to_anchor=(0.5, -0.02))
  fig.suptitle(f"{TEST_TITLES[test]}: {_titles(recs)}", fontsize=10)
  fig.tight_layout(rect=(0, 0.04, 1, 1))
  return fig


def _bars(ax, rec, metric, colors):
  rows = [r for r in rec["rows"] if r["metric"] == metric]
  names = [r["estimator"] for r in rows]
  xs = np.arange(len(rows))
  ax.bar(xs, [r["mean"] for r in rows], yerr=[r["std"] for r in rows],
         color=[colors[n] for n in names], alpha=0.8, capsize=2)
  ax.errorbar(xs, [r["floor_mean"] for r in rows],
              yerr=[r["floor_std"] for r in rows], fmt="_", color="k",
              ms=14, capsize=0, label="random-map floor")
  best = [verdicts.best_control_curve(rec, n, metric) for n in names]
  ax.plot([x for x, b in zip(xs, best) if b], [b[-1][1] for b in best if b],
          ls="none", marker="v", color="k", ms=6, label="best control")
  ax.set_xticks(xs)
  ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)


def plot_data(path: str, records) -> bool:
  """Random-label vs. true-label maps: bars per estimator, a panel per
  (model, metric)."""
  recs = _by_model(records, "data")
  if not recs:
    return False
  all_rows = [row for r in recs.values() for row in r["rows"]]
  metrics = metrics_in(all_rows) or list(similarity.METRICS)
  colors = _colors(recs.values())
  fig, axes = _grid(recs, metrics)
  for (model, metric), ax in axes.items():
    rec = recs[model]
    d = rec["data"]
    if rec["status"] != "compared":
      ax.text(0.5, 0.5, f"not compared:\ntraining accuracy "
              f"{100 * d['train_accuracy']:.1f}% < floor "
              f"{100 * d['min_train_accuracy']:.0f}%",
              ha="center", va="center", transform=ax.transAxes, fontsize=10)
      ax.set_xticks([])
    else:
      _bars(ax, rec, metric, colors)
    _finish(ax, model, metric, "similarity to the true-label maps")
    ax.set_xlabel(f"random-label model: {100 * d['train_accuracy']:.1f}% "
                  f"train, {100 * d['test_accuracy']:.1f}% test, "
                  f"{d['steps']} steps", fontsize=8)
  handles, labels = [], []
  for ax in axes.values():
    h, l = ax.get_legend_handles_labels()
    if h:
      handles, labels = h, l
      break
  if handles:
    fig.legend(handles, labels, loc="lower center", fontsize=9, ncol=2,
               bbox_to_anchor=(0.5, -0.02))
  fig.suptitle(f"{TEST_TITLES['data']}: {_titles(recs)}", fontsize=10)
  fig.tight_layout(rect=(0, 0.04, 1, 1))
  save(fig, path)
  return True


def _show(ax, image):
  ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([])


def load_maps(files) -> dict[str, np.ndarray]:
  """The stored map-grid arrays of a (model, test), estimators merged."""
  stored = {}
  for path in files:
    if workdir_lib.exists(path):
      with np.load(io.BytesIO(workdir_lib.read_bytes(path))) as z:
        stored.update({k: z[k] for k in z.files if k not in stored})
  return stored


def plot_map_grid(path: str, rec) -> bool:
  """Each stored image's maps (ABS normalization) across a test's steps.

  Rows: (image, estimator or control); columns: the input, then the steps.
  """
  stored = load_maps(rec.get("maps_files", ()))
  if "images" not in stored:
    return False
  images = stored.pop("images")
  stored.pop("index", None)
  steps = [s["name"] for s in rec["steps"]]
  ests = list(dict.fromkeys(k.split("|")[0] for k in stored))
  rows = [(i, e) for i in range(len(images)) for e in ests]
  if not rows:
    return False
  title = (f"{rec['model']}: {rec['test']} randomization, "
           f"{short_settings([rec['meta']])} (|map|, 99th percentile)")
  header = 0.66
  height = 1.3 * len(rows) + header
  fig, axes = plt.subplots(len(rows), len(steps) + 1, squeeze=False,
                           figsize=(1.3 * (len(steps) + 1) + 1.4, height))
  for r, (i, est) in enumerate(rows):
    img = images[i]
    img = (img - img.min()) / max(float(img.max() - img.min()), 1e-12)
    _show(axes[r, 0], img.mean(axis=-1))
    axes[r, 0].set_ylabel(est, fontsize=8, rotation=0, ha="right",
                          va="center")
    for c, step in enumerate(steps, start=1):
      m = stored.get(f"{est}|{step}")
      if m is None:
        axes[r, c].axis("off")
        continue
      _show(axes[r, c], similarity.normalize_abs(m[i:i + 1])[0])
  for c, step in enumerate(["input"] + steps):
    axes[0, c].set_title(step, fontsize=8, rotation=30)
  fig.suptitle(title, fontsize=8, y=1 - 0.05 / height, va="top")
  fig.subplots_adjust(top=1 - header / height, bottom=0.01, left=0.2,
                      right=0.99, wspace=0.05, hspace=0.05)
  save(fig, path)
  return True
