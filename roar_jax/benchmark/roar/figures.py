"""The ROAR and KAR figures: accuracy against the fraction of pixels.

One figure per mode that was run (`roar.png`/`.pdf`, `kar.png`/`.pdf`), a
panel per fill when the grid has several (`config.roar.fill`), with the
retrained curves (solid, filled markers, 95% Student-t intervals over seeds
as error bars) and the base model's no-retrain curves (dashed, hollow
markers) of every estimator on the same axes, so the gap between the two is
read directly.

Choices, stated in the captions too:
- The y axis is fixed at 0 to 1.02 (an auto-scaled axis makes small gaps look
  large and figures of different runs incomparable; the 0.02 keeps a curve
  at 100% off the top spine).
- No series can hide another: every estimator has its own colour and marker,
  and its points are shifted by a small x offset of its own (at most
  `MAX_OFFSET` either side), so equal accuracies at the same fraction are
  drawn side by side rather than on top of each other.
- The base model's accuracy on unmodified data is drawn as a dashed line and
  as the curves' end point where the degradation is empty: ROAR at fraction
  0 (nothing removed), KAR at fraction 1 (everything kept). KAR at fraction
  0 keeps nothing: every image is the fill, so no model can beat the
  majority class; the chance line (1 / number of classes, exact for balanced
  classes) marks that end instead of an unmeasured point.
- `random`, the control every method must beat, is black with X markers;
  every other estimator has its own colour and marker (the same in both
  modes).
- The title is one line (mode, dataset, model, seeds); what the line styles
  mean is in the legend.
"""

from typing import Sequence

import matplotlib
from matplotlib import figure as mfigure
from matplotlib import lines as mlines
import numpy as np
import pandas as pd

from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import comparisons

MODES = ("roar", "kar")
_MODE_TEXT = {"roar": ("ROAR", "removed"), "kar": ("KAR", "kept")}
# tab10 without its grey (kept for reference lines) and black for `random`.
_COLORS = tuple(c for i, c in enumerate(matplotlib.colormaps["tab10"].colors)
                if i != 7)
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "d", "H",
            "8", "*")
_REFERENCE = "0.45"  # Grey of the base-accuracy and chance lines.
DPI = 130
Y_TOP = 1.02  # Just above 1: a curve at 100% stays off the top spine.
MAX_OFFSET = 0.02  # The largest x shift of an estimator's points.
NO_RETRAIN_STYLE = "--"  # Dashed, with hollow markers.


def styles(estimators: Sequence[str]) -> dict[str, dict[str, object]]:
  """Colour, marker and line style per estimator, stable across figures."""
  out = {}
  others = [e for e in sorted(estimators) if e != comparisons.RANDOM]
  for i, est in enumerate(others):
    out[est] = {"color": _COLORS[i % len(_COLORS)],
                "marker": _MARKERS[i % len(_MARKERS)], "linestyle": "-"}
  if comparisons.RANDOM in estimators:
    out[comparisons.RANDOM] = {"color": "black", "marker": "X",
                               "linestyle": "-"}
  return out


def x_offsets(estimators: Sequence[str]) -> dict[str, float]:
  """A small x shift per estimator, centred on 0, at most `MAX_OFFSET`
  either side and 0.01 apart at most: points at the same fraction and
  accuracy are drawn side by side."""
  n = len(estimators)
  step = min(0.01, 2 * MAX_OFFSET / max(n - 1, 1))
  return {e: (i - (n - 1) / 2) * step for i, e in enumerate(estimators)}


def seeds_text(num_seeds: pd.Series) -> str:
  """'5 seeds', '1 seed' or '2-5 seeds' over the retrained rows."""
  n = sorted(set(int(v) for v in num_seeds if v > 0))
  if not n:
    return "no retrains"
  if len(n) == 1:
    return f"{n[0]} seed" + ("" if n[0] == 1 else "s")
  return f"{n[0]}-{n[-1]} seeds"


def caption(mode: str, *, base_accuracy: float | None,
            num_classes: int | None, has_ci: bool = True,
            fills: Sequence[str] = ()) -> str:
  """What the figure of `mode` shows, for summary.md and index.html
  (`fills`: the panels' fills, when there are several)."""
  name, verb = _MODE_TEXT[mode]
  spread = ("mean over seeds with 95% Student-t confidence intervals"
            if has_ci else "a single seed: no interval")
  parts = [f"{name}: test accuracy against the fraction of pixels {verb} "
           "(most important first), y axis fixed at 0 to 1.02. Solid "
           f"(filled markers): retrained from scratch, {spread}; dashed "
           "(hollow markers): the base model on the same degraded test "
           "split, without retraining. The control, random, is black (X "
           "markers). Each estimator's points are shifted by a small x "
           f"offset of its own (at most {MAX_OFFSET}) so that none hides "
           "another."]
  if base_accuracy is not None:
    at = "fraction 0 (nothing removed)" if mode == "roar" else (
        "fraction 1 (everything kept)")
    parts.append(f"Dashed grey line and star: the base model's accuracy on "
                 f"unmodified data ({100 * base_accuracy:.2f}%), the curves' "
                 f"end point at {at}.")
  if fills:
    parts.append("One panel per fill of the removed pixels, left to right: "
                 + ", ".join(fills) + ".")
  if num_classes:
    parts.append(f"Dash-dotted line: chance, 1/{num_classes}"
                 + (" (KAR at fraction 0 keeps nothing: chance)."
                    if mode == "kar" else "."))
  return " ".join(parts)


def _with_anchor(x: np.ndarray, y: np.ndarray, anchor):
  """The curve with the base-accuracy point added where it has none."""
  if anchor is None or np.any(np.isclose(x, anchor[0])):
    return x, y
  order = np.argsort(np.append(x, anchor[0]), kind="stable")
  return np.append(x, anchor[0])[order], np.append(y, anchor[1])[order]


def _draw_estimator(ax, sub: pd.DataFrame, style, anchor, dx: float = 0.0):
  """The retrained curve with its intervals, and the no-retrain curve, all
  shifted right by `dx`."""
  retrained = sub.dropna(subset=["mean_accuracy"])
  if not retrained.empty:
    x = retrained["threshold"].to_numpy()
    y = retrained["mean_accuracy"].to_numpy()
    x, y = _with_anchor(x, y, anchor)
    ax.plot(x + dx, y, color=style["color"],
            marker=style["marker"], linestyle=style["linestyle"],
            linewidth=1.6, markersize=6, zorder=3)
    ci = retrained.dropna(subset=["ci95_low"])
    if not ci.empty:
      m = ci["mean_accuracy"].to_numpy()
      ax.errorbar(ci["threshold"].to_numpy() + dx, m,
                  yerr=[m - ci["ci95_low"].to_numpy(),
                        ci["ci95_high"].to_numpy() - m],
                  fmt="none", ecolor=style["color"], elinewidth=1.1,
                  capsize=3.5, zorder=3)
  nr = sub.dropna(subset=["no_retrain_accuracy"])
  if not nr.empty:
    x = nr["threshold"].to_numpy()
    y = nr["no_retrain_accuracy"].to_numpy()
    x, y = _with_anchor(x, y, anchor)
    ax.plot(x + dx, y, color=style["color"],
            marker=style["marker"], linestyle=NO_RETRAIN_STYLE,
            linewidth=1.3, markersize=5.5, markerfacecolor="white", zorder=2)


def _legend_handles(style_of, *, base_accuracy, num_classes, has_ci,
                    seeds: str):
  handles = [mlines.Line2D([], [], label=est, **style)
             for est, style in style_of.items()]
  key = dict(color="0.2", linewidth=1.4)
  handles += [mlines.Line2D([], [], linestyle="-", marker="o",
                            label="retrained: solid, filled", **key),
              mlines.Line2D([], [], linestyle=NO_RETRAIN_STYLE, marker="o",
                            markerfacecolor="white",
                            label="no retraining (base model): dashed, "
                            "hollow", **key)]
  if has_ci:
    handles.append(mlines.Line2D([], [], linestyle="none", marker="|",
                                 markersize=12, color="0.2",
                                 label=f"95% CI (Student t, {seeds})"))
  if base_accuracy is not None:
    handles.append(mlines.Line2D(
        [], [], color=_REFERENCE, linestyle=(0, (6, 3)), marker="*",
        markersize=10, markerfacecolor="black", markeredgecolor="black",
        label=f"base model ({100 * base_accuracy:.1f}%)"))
  if num_classes:
    handles.append(mlines.Line2D([], [], color=_REFERENCE, linestyle="-.",
                                 label=f"chance (1/{num_classes})"))
  return handles


def _draw_panel(ax, rows: pd.DataFrame, mode: str, present, *,
                base_accuracy: float | None, num_classes: int | None):
  # The offsets of the estimators present: the same in every panel.
  offsets = x_offsets(list(present))
  """The curves of one mode and fill on `ax`, with the reference lines."""
  _, verb = _MODE_TEXT[mode]
  anchor = None
  if base_accuracy is not None:
    anchor = (0.0, base_accuracy) if mode == "roar" else (1.0, base_accuracy)
    ax.axhline(base_accuracy, color=_REFERENCE, linestyle=(0, (6, 3)),
               linewidth=1.0, zorder=1)
  if num_classes:
    ax.axhline(1.0 / num_classes, color=_REFERENCE, linestyle="-.",
               linewidth=1.0, zorder=1)
  for est, style in present.items():
    _draw_estimator(ax, rows[rows["estimator"] == est], style, anchor,
                    offsets[est])
  if anchor is not None:
    ax.plot(*anchor, marker="*", markersize=13, color="black", zorder=4,
            linestyle="none")
  ax.set_xlim(-0.02 - MAX_OFFSET, 1.02 + MAX_OFFSET)
  ax.set_ylim(0.0, Y_TOP)
  ax.set_yticks(np.linspace(0.0, 1.0, 6))
  ax.set_xlabel(f"fraction of pixels {verb} (most important first)")
  ax.grid(alpha=0.3, linewidth=0.6)


def mode_figure(rows: pd.DataFrame, mode: str, *, style_of,
                base_accuracy: float | None = None,
                num_classes: int | None = None, dataset: str = "",
                model: str = ""):
  """The figure of one mode (rows: `results.aggregate_frame` of that mode):
  one panel per fill, side by side on the same y axis."""
  name, _ = _MODE_TEXT[mode]
  seeds = seeds_text(rows["num_seeds"])
  fills = sorted(set(rows["fill"]))
  # A bare Figure (no pyplot): no global state, no backend to select.
  fig = mfigure.Figure(figsize=(1.8 + 6.0 * len(fills), 4.6))
  axes = fig.subplots(1, len(fills), sharey=True, squeeze=False)[0]
  present = {e: s for e, s in style_of.items()
             if e in set(rows["estimator"])}
  for ax, fill in zip(axes, fills):
    _draw_panel(ax, rows[rows["fill"] == fill], mode, present,
                base_accuracy=base_accuracy, num_classes=num_classes)
    if len(fills) > 1:
      ax.set_title(f"fill: {fill}", fontsize=10)
  axes[0].set_ylabel("test accuracy (axis fixed at 0 to 1.02)")
  has_ci = bool(rows["ci95_low"].notna().any())
  what = ", ".join(p for p in (dataset, model) if p)
  title = f"{name}{': ' + what if what else ''} ({seeds})"
  if len(fills) > 1:
    fig.suptitle(title, fontsize=10)
  else:
    axes[0].set_title(title, fontsize=10)
  axes[-1].legend(handles=_legend_handles(
      present, base_accuracy=base_accuracy, num_classes=num_classes,
      has_ci=has_ci, seeds=seeds),
                  loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8,
                  frameon=False)
  return fig


def modes_present(rows: pd.DataFrame) -> list[str]:
  """The modes with a retrained or no-retrain score, in ROAR, KAR order."""
  scored = rows.dropna(subset=["mean_accuracy", "no_retrain_accuracy"],
                       how="all")
  return [m for m in MODES if (scored["mode"] == m).any()]


def write_mode_figures(wd: workdir_lib.Workdir, rows: pd.DataFrame, *,
                       base_accuracy: float | None = None,
                       num_classes: int | None = None, dataset: str = "",
                       model: str = "") -> list[str]:
  """Writes `<mode>.png` and `<mode>.pdf` for every mode that was run.

  Returns:
    The modes drawn.
  """
  style_of = styles(sorted(set(rows["estimator"])))
  drawn = modes_present(rows)
  for mode in drawn:
    fig = mode_figure(rows[rows["mode"] == mode], mode, style_of=style_of,
                      base_accuracy=base_accuracy, num_classes=num_classes,
                      dataset=dataset, model=model)
    for suffix in ("png", "pdf"):
      workdir_lib.save_figure(fig, wd.report(f"{mode}.{suffix}"), dpi=DPI,
                              bbox_inches="tight")
  return drawn
