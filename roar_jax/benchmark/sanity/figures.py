"""The sanity checks' figures: similarity curves, bar charts and map grids.

Every figure is a grid of panels (`NCOLS` columns, one panel per metric and
model) with text readable at 100 dpi, and states the re-initialization,
BatchNorm handling, explained class and seed in its title. The controls
appear in each panel as a dashed line per estimator: the similarity of the
best control (the one most similar to that estimator's trained maps) at each
step.
"""

import io
import math
import textwrap
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np  # noqa: E402

from roar_jax import workdir as workdir_lib  # noqa: E402
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
}
TEST_TITLES = {
    "cascading": "Cascading randomization (from the logits down, cumulative)",
    "independent": "Independent randomization (one layer, the rest trained)",
    "data": "Data randomization (model trained on permuted labels)",
}
CONTROL_NOTE = ("dashed: the best control (random or sobel map, which ignore "
                "the model) compared with that estimator's trained maps")


def settings_line(meta: Mapping[str, Any]) -> str:
  """The settings a result depends on, in one line for a figure title."""
  return (f"re-init: {meta['init_description']}; BatchNorm statistics: "
          f"{meta['batch_norm']}; class explained: "
          f"{meta['target_description']}; seed {meta['seed']}; "
          f"{meta['num_images']} test images")


def metrics_in(rows) -> list[str]:
  present = {r["metric"] for r in rows}
  order = similarity.METRICS + similarity.FOREGROUND_METRICS
  return [m for m in order if m in present]


def save(fig, path: str):
  workdir_lib.save_figure(fig, path, dpi=100, bbox_inches="tight")
  plt.close(fig)


def _by_model(records, test):
  return {r["model"]: r for r in records if r["test"] == test}


def _titles(recs, width: int = 120) -> str:
  lines = sorted({settings_line(r["meta"]) for r in recs.values()})
  return "\n".join(textwrap.fill(l, width) for l in lines)


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


def _curves(ax, rec, metric, colors):
  rows = [r for r in rec["rows"] if r["metric"] == metric]
  floors = []
  for est in dict.fromkeys(r["estimator"] for r in rows):
    pts = sorted((r["step"], r["mean"], r["std"]) for r in rows
                 if r["estimator"] == est)
    xs, ys, sd = (np.array(v, float) for v in zip(*pts))
    ax.plot(xs, ys, marker="o", ms=3, label=est, color=colors[est])
    ax.fill_between(xs, ys - sd, ys + sd, color=colors[est], alpha=0.12)
    best = verdicts.best_control_curve(rec, est, metric)
    if best:
      ax.plot(*zip(*best), ls="--", lw=1, color=colors[est])
    floor = next(r for r in rows if r["estimator"] == est)
    floors.append((floor["floor_mean"], floor["floor_std"]))
  if floors:
    ax.axhspan(min(m - s for m, s in floors), max(m + s for m, s in floors),
               color="grey", alpha=0.25, label="random-map floor")
  ax.plot([], [], ls="--", color="k", lw=1, label="best control")


def plot_randomization(path: str, records, test: str) -> bool:
  """Similarity vs. layers randomized: a panel per (model, metric)."""
  recs = _by_model(records, test)
  if not recs:
    return False
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
  fig.suptitle(f"{TEST_TITLES[test]}\n{_titles(recs)}\n{CONTROL_NOTE}",
               fontsize=10)
  fig.tight_layout(rect=(0, 0.04, 1, 1))
  save(fig, path)
  return True


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
  fig.suptitle(f"{TEST_TITLES['data']}\n{_titles(recs)}", fontsize=10)
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
  width = max(40, 14 * (len(steps) + 1))
  title = (f"{rec['model']}: {TEST_TITLES[rec['test']]}\n"
           f"{textwrap.fill(settings_line(rec['meta']), width)}\n"
           "(|map| summed over channels, scaled to its 99th percentile; "
           "random and sobel: the controls)")
  header = 0.16 * (title.count("\n") + 1) + 0.5
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
