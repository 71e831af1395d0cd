"""The no-retrain metrics' figure: `metrics.png` and `metrics.pdf`.

One panel per metric (deletion, insertion, ROAD MoRF and LeRF): each
estimator's mean curve over the images with its 95% Student-t interval per
point as error bars (`curve_ci95` of its record; records written before it
existed are drawn without), then a last panel with every area under the
curve and its 95% interval, exactly the values of metrics.csv
(`ci95_low`, `ci95_high`). Estimators keep the colours and markers of the
ROAR/KAR figures (`figures.styles`) and the same small x offsets, so no
curve hides another. The title is one line; the y axes end just above 1.
"""

from typing import Any, Mapping, Sequence

from matplotlib import figure as mfigure
import numpy as np

from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import figures
from roar_jax.benchmark.roar import metric_plugins

# The y axis of each curve metric's panel; others read 'score'.
YLABELS = {"deletion": "p(explained class)", "insertion":
           "p(explained class)", "road_morf": "accuracy",
           "road_lerf": "accuracy"}
DPI = 110
FILES = ("metrics.png", "metrics.pdf")


def _curve_panel(ax, name: str, records, style_of, offsets):
  """The mean curve of every estimator with its per-point intervals."""
  for est in style_of:
    m = records[est]["metrics"].get(name)
    if m is None:
      continue
    style = style_of[est]
    x = np.asarray(m["fractions"], float) + offsets[est]
    y = np.asarray(m["curve"], float)
    ax.plot(x, y, color=style["color"], marker=style["marker"],
            linestyle=style["linestyle"], markersize=4, linewidth=1.3,
            label=est)
    ci = np.asarray(m.get("curve_ci95") or [], float)
    if ci.shape == (len(y), 2) and np.isfinite(ci).any():
      ax.errorbar(x, y, yerr=[y - ci[:, 0], ci[:, 1] - y], fmt="none",
                  ecolor=style["color"], elinewidth=0.9, capsize=2)
  ax.set_title(metric_plugins.get(name).title or name, fontsize=9)
  ax.set_xlabel("fraction of positions")
  ax.set_ylabel(YLABELS.get(name, "score"))
  ax.set_xlim(-0.02 - figures.MAX_OFFSET, 1.02 + figures.MAX_OFFSET)


def _auc_panel(ax, names: Sequence[str], rows, style_of, offsets):
  """Every AUC of metrics.csv with its 95% interval, a column per metric."""
  scale = 0.3 / max(figures.MAX_OFFSET, 1e-9)  # Wider spread on a category.
  for est, style in style_of.items():
    xs, ys, lo, hi = [], [], [], []
    for i, name in enumerate(names):
      row = next((r for r in rows if r["estimator"] == est
                  and r["metric"] == metric_plugins.get(name).column),
                 None)
      if row is None:
        continue
      xs.append(i + scale * offsets[est])
      ys.append(row["value"])
      lo.append(row["ci95_low"])
      hi.append(row["ci95_high"])
    if not xs:
      continue
    ys, lo, hi = (np.asarray(v, float) for v in (ys, lo, hi))
    ax.errorbar(xs, ys, yerr=[ys - lo, hi - ys], fmt=style["marker"],
                color=style["color"], markersize=5, capsize=3,
                elinewidth=1.1, linestyle="none", label=est)
  ax.set_xticks(range(len(names)))
  ax.set_xticklabels(
      [f"{n}\n({'lower' if metric_plugins.get(n).lower_is_better else 'higher'}"
       " is better)" for n in names], fontsize=7)
  ax.set_xlim(-0.5, len(names) - 0.5)
  ax.set_title("Area under the curve, 95% CI", fontsize=9)
  ax.set_ylabel("AUC (mean over the fraction axis)")


def metrics_figure(records: Mapping[str, Mapping[str, Any]],
                   rows: Sequence[Mapping[str, Any]]) -> mfigure.Figure:
  """The figure of `records` (estimator -> metric record) and `rows`
  (metrics.csv's rows of the same records)."""
  # A panel per metric with curves (areas in [0, 1]); metrics with one score
  # per image are in the tables only.
  names = [n for n in metric_plugins.names()
           if any("curve" in r["metrics"].get(n, ()) for r in records.values())]
  style_of = figures.styles(sorted(records))
  offsets = figures.x_offsets(list(style_of))
  ncols = len(names) + 1
  # A bare Figure (no pyplot): no global state, no backend to select.
  fig = mfigure.Figure(figsize=(3.9 * ncols + 1.6, 3.9))
  axes = fig.subplots(1, ncols, squeeze=False)[0]
  for ax, name in zip(axes, names):
    _curve_panel(ax, name, records, style_of, offsets)
  _auc_panel(axes[-1], names, rows, style_of, offsets)
  for ax in axes:
    ax.set_ylim(-0.02, figures.Y_TOP)
    ax.set_yticks(np.linspace(0.0, 1.0, 6))
    ax.grid(alpha=0.3, linewidth=0.6)
  n = sorted({int(r["n"]) for r in rows})
  images = (f"{n[0]}" if len(n) == 1 else f"{n[0]}-{n[-1]}") if n else "no"
  fig.suptitle(f"No-retrain metrics of the base model ({images} test images;"
               " error bars: 95% Student-t CI over the images)", fontsize=10)
  handles, labels = axes[-1].get_legend_handles_labels()
  axes[-1].legend(handles, labels, loc="upper left", fontsize=8,
                  bbox_to_anchor=(1.02, 1.0), frameon=False)
  fig.tight_layout()
  return fig


def write(wd: workdir_lib.Workdir, records: Mapping[str, Mapping[str, Any]],
          rows: Sequence[Mapping[str, Any]]) -> list[str]:
  """Writes metrics.png and metrics.pdf under `wd`'s report folder.

  Returns:
    The paths written.
  """
  fig = metrics_figure(records, rows)
  paths = [wd.report(f) for f in FILES]
  for path in paths:
    workdir_lib.save_figure(fig, path, dpi=DPI, bbox_inches="tight")
  return paths
