"""The sanity checks' report: sanity.csv, similarity plots, map grids, summary.

`build_report(workdir, records)` writes under `<workdir>/report/`:

- `sanity.csv`: one row per (test, model, estimator, step, metric), with the
  mean and std over the images, the number of images with a defined value,
  the random-map floor beside it, and the settings every result depends on
  (re-initialization, BatchNorm, explained class, seed);
- `sanity_cascading.png`, `sanity_independent.png`: similarity to the trained
  model's maps against the layers randomized (a line per estimator with a
  1-std band, a panel per metric, a row per model; the grey band is the
  random-map floor);
- `sanity_data.png`: similarity of the random-label model's maps to the
  true-label model's (a bar per estimator, a panel per metric);
- `sanity_cascading_maps_<model>.png` (the paper's Fig. 2: an image's maps
  across the cascading steps), `sanity_independent_maps_<model>.png`,
  `sanity_data_maps_<model>.png`;
- `sanity.md`: the settings and the data-randomization accuracies in words.

Every figure states the re-initialization, BatchNorm handling, explained class
and seed in its title.
"""

import csv
import math
import os
import textwrap
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np  # noqa: E402

from roar_jax.benchmark.sanity import similarity  # noqa: E402

CSV_COLUMNS = ("test", "model", "estimator", "step", "step_name", "layers",
               "metric", "mean", "std", "n", "floor_mean", "floor_std",
               "model_accuracy", "same_prediction", "status", "init",
               "init_std", "reset_batch_stats", "batch_norm", "target", "seed",
               "num_images", "train_accuracy", "test_accuracy",
               "trained_test_accuracy")
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


def _fmt(v) -> str:
  if isinstance(v, float):
    return "nan" if math.isnan(v) else f"{v:.6g}"
  return str(v)


def csv_rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """The flat rows of `sanity.csv`, settings included."""
  out = []
  for rec in records:
    meta = rec["meta"]
    common = {k: meta.get(k) for k in ("init", "init_std", "reset_batch_stats",
                                       "batch_norm", "target", "seed",
                                       "num_images", "trained_test_accuracy")}
    common["status"] = rec["status"]
    if rec["test"] == "data":
      common["train_accuracy"] = rec["data"]["train_accuracy"]
      common["test_accuracy"] = rec["data"]["test_accuracy"]
      if rec["status"] != "compared":
        # A refused comparison still reports what the model reached.
        out.append({**common, "test": "data", "model": rec["model"],
                    "step": 1, "step_name": "random labels"})
        continue
    for row in rec["rows"]:
      out.append({**common, **row})
  return out


def write_csv(path: str, rows: Sequence[Mapping[str, Any]]):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
      writer.writerow({k: _fmt(v) for k, v in row.items() if v is not None})
  os.replace(tmp, path)


def read_csv(path: str) -> list[dict[str, Any]]:
  """sanity.csv back as dicts, numbers as floats (empty cells as None)."""
  numeric = ("step", "mean", "std", "n", "floor_mean", "floor_std",
             "model_accuracy", "same_prediction", "init_std", "seed",
             "num_images", "train_accuracy", "test_accuracy",
             "trained_test_accuracy")
  with open(path) as f:
    rows = list(csv.DictReader(f))
  for r in rows:
    for k in numeric:
      r[k] = float(r[k]) if r.get(k) not in (None, "") else None
  return rows


def settings_line(meta: Mapping[str, Any]) -> str:
  """The settings a result depends on, in one line for a figure title."""
  return (f"re-init: {meta['init_description']}; BatchNorm statistics: "
          f"{meta['batch_norm']}; class explained: "
          f"{meta['target_description']}; seed {meta['seed']}; "
          f"{meta['num_images']} test images")


def _metrics_in(rows) -> list[str]:
  present = {r["metric"] for r in rows}
  order = similarity.METRICS + similarity.FOREGROUND_METRICS
  return [m for m in order if m in present]


def _save(fig, path: str):
  tmp = f"{path}.tmp-{os.getpid()}.png"
  fig.savefig(tmp, dpi=100, bbox_inches="tight")
  plt.close(fig)
  os.replace(tmp, path)


def _by_model(records, test):
  return {r["model"]: r for r in records if r["test"] == test}


def _titles(recs, width: int = 160) -> str:
  metas = [r["meta"] for r in recs.values()]
  lines = sorted({settings_line(m) for m in metas})
  return "\n".join(textwrap.fill(l, width) for l in lines)


def _colors(records) -> dict[str, Any]:
  """One color per estimator, the same in every panel and figure."""
  names = list(dict.fromkeys(row["estimator"] for r in records
                             for row in r["rows"]))
  cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  return {n: cycle[i % len(cycle)] for i, n in enumerate(names)}


def plot_randomization(path: str, records, test: str):
  """Similarity vs. layers randomized: rows = models, panels = metrics."""
  recs = _by_model(records, test)
  if not recs:
    return False
  metrics = _metrics_in([row for r in recs.values() for row in r["rows"]])
  colors = _colors(recs.values())
  fig, axes = plt.subplots(len(recs), len(metrics), squeeze=False,
                           figsize=(3.6 * len(metrics), 3.3 * len(recs) + 1.2))
  for i, (model, rec) in enumerate(sorted(recs.items())):
    steps = [s["name"] for s in rec["steps"]]
    for j, metric in enumerate(metrics):
      ax = axes[i, j]
      rows = [r for r in rec["rows"] if r["metric"] == metric]
      floors = []
      for est in dict.fromkeys(r["estimator"] for r in rows):
        pts = sorted((r["step"], r["mean"], r["std"]) for r in rows
                     if r["estimator"] == est)
        xs, ys, sd = (np.array(v, float) for v in zip(*pts))
        ax.plot(xs, ys, marker="o", ms=3, label=est, color=colors[est])
        ax.fill_between(xs, ys - sd, ys + sd, color=colors[est], alpha=0.12)
        floor = next(r for r in rows if r["estimator"] == est)
        floors.append((floor["floor_mean"], floor["floor_std"]))
      if floors:
        lo = min(m - s for m, s in floors)
        hi = max(m + s for m, s in floors)
        ax.axhspan(lo, hi, color="grey", alpha=0.25, label="random-map floor")
      ax.axhline(0.0, color="k", lw=0.5)
      ax.set_xticks(range(len(steps)))
      ax.set_xticklabels(steps, rotation=45, ha="right", fontsize=8)
      ax.set_ylim(-0.5, 1.05)
      ax.grid(alpha=0.3)
      ax.set_title(f"{model}: {METRIC_TITLES.get(metric, metric)}",
                   fontsize=9)
      if j == 0:
        ax.set_ylabel("similarity to the trained model's maps", fontsize=8)
    # Outside the panels, so that no curve hides behind it.
    axes[i, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
  fig.suptitle(f"{TEST_TITLES[test]}\n{_titles(recs)}", fontsize=9)
  fig.tight_layout()
  _save(fig, path)
  return True


def plot_data(path: str, records):
  """Random-label vs. true-label maps: bars per estimator, panels = metrics."""
  recs = _by_model(records, "data")
  if not recs:
    return False
  all_rows = [row for r in recs.values() for row in r["rows"]]
  metrics = _metrics_in(all_rows) or list(similarity.METRICS)
  colors = _colors(recs.values())
  fig, axes = plt.subplots(len(recs), len(metrics), squeeze=False,
                           figsize=(3.6 * len(metrics), 3.6 * len(recs) + 1.2))
  for i, (model, rec) in enumerate(sorted(recs.items())):
    d = rec["data"]
    head = (f"random-label model: {100 * d['train_accuracy']:.1f}% train,\n"
            f"{100 * d['test_accuracy']:.1f}% test accuracy, "
            f"{d['steps']} steps")
    for j, metric in enumerate(metrics):
      ax = axes[i, j]
      rows = [r for r in rec["rows"] if r["metric"] == metric]
      if rec["status"] != "compared":
        ax.text(0.5, 0.5, f"not compared:\ntraining accuracy "
                f"{100 * d['train_accuracy']:.1f}% < floor "
                f"{100 * d['min_train_accuracy']:.0f}%",
                ha="center", va="center", transform=ax.transAxes, fontsize=9)
        ax.set_xticks([])
      else:
        names = [r["estimator"] for r in rows]
        xs = np.arange(len(rows))
        ax.bar(xs, [r["mean"] for r in rows], yerr=[r["std"] for r in rows],
               color=[colors[n] for n in names], alpha=0.8, capsize=2)
        ax.errorbar(xs, [r["floor_mean"] for r in rows],
                    yerr=[r["floor_std"] for r in rows], fmt="_", color="k",
                    ms=12, capsize=0, label="random-map floor")
        ax.set_xticks(xs)
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        ax.axhline(0.0, color="k", lw=0.5)
        ax.set_ylim(-0.5, 1.05)
        ax.grid(alpha=0.3, axis="y")
        if j == len(metrics) - 1:
          ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
      ax.set_title(f"{model}: {METRIC_TITLES.get(metric, metric)}",
                   fontsize=9)
      if j == 0:
        ax.set_ylabel(f"similarity to the true-label maps\n{head}",
                      fontsize=8)
  fig.suptitle(f"{TEST_TITLES['data']}\n{_titles(recs)}", fontsize=9)
  fig.tight_layout()
  _save(fig, path)
  return True


def _show(ax, image):
  ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([])


def plot_map_grid(path: str, maps_file: str, rec) -> bool:
  """Each stored image's maps (ABS normalization) across a test's steps.

  Rows: (image, estimator); columns: the input, then the steps.
  """
  if not os.path.exists(maps_file):
    return False
  with np.load(maps_file) as z:
    stored = {k: z[k] for k in z.files}
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
           "(|map| summed over channels, scaled to its 99th percentile)")
  # Inches above the panels: the title's lines and the rotated column titles.
  header = 0.13 * (title.count("\n") + 1) + 0.45
  height = 1.3 * len(rows) + header
  fig, axes = plt.subplots(len(rows), len(steps) + 1, squeeze=False,
                           figsize=(1.3 * (len(steps) + 1) + 1.2, height))
  for r, (i, est) in enumerate(rows):
    img = images[i]
    img = (img - img.min()) / max(float(img.max() - img.min()), 1e-12)
    _show(axes[r, 0], img.mean(axis=-1))
    axes[r, 0].set_ylabel(est, fontsize=7, rotation=0, ha="right",
                          va="center")
    for c, step in enumerate(steps, start=1):
      m = stored.get(f"{est}|{step}")
      if m is None:
        axes[r, c].axis("off")
        continue
      _show(axes[r, c], similarity.normalize_abs(m[i:i + 1])[0])
  for c, step in enumerate(["input"] + steps):
    axes[0, c].set_title(step, fontsize=8, rotation=30)
  fig.suptitle(title, fontsize=7, y=1 - 0.05 / height, va="top")
  fig.subplots_adjust(top=1 - header / height, bottom=0.01, left=0.2,
                      right=0.99, wspace=0.05, hspace=0.05)
  _save(fig, path)
  return True


def _summary(path: str, records):
  lines = ["# Sanity checks (Adebayo et al. 2018)", ""]
  for model in sorted({r["model"] for r in records}):
    recs = [r for r in records if r["model"] == model]
    meta = recs[0]["meta"]
    lines += [f"## {model}", "",
              f"- True-label model test accuracy: "
              f"{100 * meta['trained_test_accuracy']:.2f}%",
              f"- Re-initialization: {meta['init_description']}",
              f"- BatchNorm statistics: {meta['batch_norm']}",
              f"- Class explained: {meta['target_description']}",
              f"- Test images: {meta['num_images']}"]
    for est, why in sorted(meta.get("skipped_estimators", {}).items()):
      lines.append(f"- Skipped estimator {est}: {why}")
    lines += ["- Seeds:"] + [f"  - {k}: {v}" for k, v in meta["seeds"].items()]
    for rec in recs:
      if rec["test"] != "data":
        continue
      d = rec["data"]
      verdict = ("maps compared" if rec["status"] == "compared" else
                 f"maps NOT compared: below the floor of "
                 f"{100 * d['min_train_accuracy']:.0f}%")
      lines.append(
          f"- Random-label model: {100 * d['train_accuracy']:.2f}% training "
          f"accuracy on {d['num_train']} images with permuted labels, "
          f"{100 * d['test_accuracy']:.2f}% test accuracy (chance "
          f"{100 * d['chance']:.0f}%), {d['steps']} steps; {verdict}.")
    lines.append("")
    for rec in recs:
      if not rec["rows"]:
        continue
      last = max(r["step"] for r in rec["rows"])
      lines += [f"### {TEST_TITLES[rec['test']]}: step {last} "
                f"({rec['steps'][last]['name']})", "",
                "| estimator | " + " | ".join(_metrics_in(rec["rows"])) + " |",
                "|---" * (1 + len(_metrics_in(rec["rows"]))) + "|"]
      for est in dict.fromkeys(r["estimator"] for r in rec["rows"]):
        cells = []
        for m in _metrics_in(rec["rows"]):
          r = next(x for x in rec["rows"] if x["estimator"] == est
                   and x["metric"] == m and x["step"] == last)
          cells.append(f"{r['mean']:.3f} ± {r['std']:.3f} "
                       f"(floor {r['floor_mean']:.3f})")
        lines.append(f"| {est} | " + " | ".join(cells) + " |")
      lines.append("")
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write("\n".join(lines) + "\n")
  os.replace(tmp, path)


def build_report(workdir: str, records: Sequence[Mapping[str, Any]]
                 ) -> dict[str, Any]:
  """Writes every report file for `records` (sanity.run's records).

  Args:
    workdir: the experiment workdir; files go to `<workdir>/report/`, the
      stored maps are read from `<workdir>/sanity/<model>/`.
    records: one record per (model, test).

  Returns:
    {'files': [paths written], 'rows': the csv rows}.
  """
  out = os.path.join(workdir, "report")
  os.makedirs(out, exist_ok=True)
  files = []
  rows = csv_rows(records)
  write_csv(os.path.join(out, "sanity.csv"), rows)
  files.append(os.path.join(out, "sanity.csv"))
  for test in ("cascading", "independent"):
    path = os.path.join(out, f"sanity_{test}.png")
    if plot_randomization(path, records, test):
      files.append(path)
  path = os.path.join(out, "sanity_data.png")
  if plot_data(path, records):
    files.append(path)
  for rec in records:
    maps_file = os.path.join(workdir, "sanity", rec["model"],
                             f"{rec['test']}_maps.npz")
    path = os.path.join(out, f"sanity_{rec['test']}_maps_{rec['model']}.png")
    if rec["status"] == "compared" and plot_map_grid(path, maps_file, rec):
      files.append(path)
  _summary(os.path.join(out, "sanity.md"), records)
  files.append(os.path.join(out, "sanity.md"))
  return {"files": files, "rows": rows}
