"""The ROAR/KAR report: results.csv, accuracy curves and a markdown summary.

`build_report` can run at any time: it reads whatever results exist, so a
partial grid gives a partial report, marked as such in summary.md.
"""

import csv
import io
import math
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top

from roar_jax import workdir as workdir_lib  # noqa: E402
from roar_jax.benchmark.roar import results as results_lib  # noqa: E402

_MODE_TITLES = {"roar": "ROAR: fraction of the most important pixels removed",
                "kar": "KAR: fraction of the most important pixels kept"}


def write_csv(path: str, rows: Sequence[Mapping[str, Any]]):
  workdir_lib.write_csv(path, [
      {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()}
      for r in rows], results_lib.CSV_COLUMNS)


def read_csv(path: str) -> list[dict[str, Any]]:
  rows = list(csv.DictReader(io.StringIO(
      workdir_lib.read_bytes(path).decode())))
  for r in rows:
    for k in ("threshold", "mean_accuracy", "std_accuracy",
              "no_retrain_accuracy"):
      r[k] = float(r[k])
    r["num_seeds"] = int(r["num_seeds"])
  return rows


def _finish_axes(ax, mode: str, title: str, legend: bool):
  ax.set_xlabel("fraction of pixels " + ("removed" if mode == "roar"
                                          else "kept"))
  ax.set_ylabel("test accuracy")
  ax.set_title(title, fontsize=10)
  ax.set_xlim(0, 1)
  ax.grid(alpha=0.3)
  if legend:
    ax.legend(fontsize=8)


def _save_figure(fig, path: str):
  fig.tight_layout()
  workdir_lib.save_figure(fig, path, dpi=110)
  plt.close(fig)


def _retrained_plot(path: str, rows, mode: str, title: str):
  """Mean retrained accuracy per estimator vs threshold, std over seeds."""
  rows = [r for r in rows
          if r["mode"] == mode and not math.isnan(r["mean_accuracy"])]
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  for est in sorted({r["estimator"] for r in rows}):
    pts = sorted((r["threshold"], r["mean_accuracy"], r["std_accuracy"])
                 for r in rows if r["estimator"] == est)
    xs, ys, es = zip(*pts)
    ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=est)
  _finish_axes(ax, mode, title, legend=bool(rows))
  _save_figure(fig, path)


def _no_retrain_plot(path: str, rows):
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
  for ax, mode in zip(axes, ("roar", "kar")):
    sel = [r for r in rows if r["mode"] == mode
           and not math.isnan(r["no_retrain_accuracy"])]
    for est in sorted({r["estimator"] for r in sel}):
      pts = sorted((r["threshold"], r["no_retrain_accuracy"]) for r in sel
                   if r["estimator"] == est)
      ax.plot(*zip(*pts), marker="o", label=est)
    _finish_axes(ax, mode, f"{mode.upper()} without retraining (base model)",
                 legend=bool(sel))
  _save_figure(fig, path)


def rank_estimators(rows) -> dict[str, list[tuple[str, float]]]:
  """Estimators ordered best first, per mode.

  ROAR: a better estimator's removed pixels matter more, so the retrained
  accuracy is LOWER (ordered by mean accuracy over thresholds, ascending).
  KAR: a better estimator's kept pixels suffice, so accuracy is HIGHER.

  Args:
    rows: aggregated rows.

  Returns:
    mode -> [(estimator, mean accuracy over its thresholds)], best first.
  """
  ranked = {}
  for mode, best_low in (("roar", True), ("kar", False)):
    scores = {}
    for est in {r["estimator"] for r in rows if r["mode"] == mode}:
      accs = [r["mean_accuracy"] for r in rows if r["mode"] == mode
              and r["estimator"] == est and not math.isnan(r["mean_accuracy"])]
      if accs:
        scores[est] = sum(accs) / len(accs)
    ranked[mode] = sorted(scores.items(), key=lambda kv: kv[1],
                          reverse=not best_low)
  return ranked


def build_report(wd: workdir_lib.Workdir, records, no_retrain, *,
                 config=None, expected_units: int | None = None,
                 base_accuracy: float | None = None) -> dict[str, Any]:
  """Writes `W/report/`: results.csv, roar.png, kar.png, no_retrain.png and
  summary.md.

  Args:
    wd: the experiment workdir.
    records: the result records to count (those of the current config).
    no_retrain: (estimator, mode, threshold) -> accuracy of the base model on
      that degraded test split, without retraining.
    config: the experiment config, quoted in the summary.
    expected_units: how many retrains the full grid has; fewer results mark
      the report partial.
    base_accuracy: the unmodified base model's test accuracy.

  Returns:
    {'rows': aggregated rows, 'partial': bool, 'num_results': int}.
  """
  rows = results_lib.aggregate(records, no_retrain)
  write_csv(wd.report("results.csv"), rows)
  for mode in ("roar", "kar"):
    _retrained_plot(wd.report(f"{mode}.png"), rows, mode,
                    _MODE_TITLES[mode] + ", retrained")
  _no_retrain_plot(wd.report("no_retrain.png"), rows)
  partial = expected_units is not None and len(records) < expected_units
  _write_summary(wd.report("summary.md"), rows, config=config,
                 partial=partial, num_results=len(records),
                 expected_units=expected_units, base_accuracy=base_accuracy)
  return {"rows": rows, "partial": partial, "num_results": len(records)}


def _fmt(v: float) -> str:
  return "–" if math.isnan(v) else f"{100 * v:.2f}"


def _write_summary(path, rows, *, config, partial, num_results,
                   expected_units, base_accuracy):
  lines = ["# ROAR / KAR report", ""]
  if partial:
    lines += [f"**Partial report:** {num_results} of {expected_units} "
              "retrains have finished; rerun the grid to complete it.", ""]
  else:
    lines += [f"{num_results} retrains.", ""]
  if base_accuracy is not None:
    lines += [f"Base model (unmodified data) test accuracy: "
              f"{100 * base_accuracy:.2f}%.", ""]
  lines += ["Accuracies in %, mean ± std over seeds; 'no retrain' is the base "
            "model on the same degraded test split.", "",
            "| estimator | mode | fraction | seeds | accuracy | no retrain |",
            "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['estimator']} | {r['mode']} | {r['threshold']:.2f} | "
        f"{r['num_seeds']} | {_fmt(r['mean_accuracy'])} ± "
        f"{_fmt(r['std_accuracy'])} | {_fmt(r['no_retrain_accuracy'])} |")
  ranked = rank_estimators(rows)
  lines += ["", "## Estimators ranked", "",
            "ROAR (best first: lowest accuracy after removing its most "
            "important pixels):", ""]
  lines += [f"{i + 1}. {e} ({_fmt(a)})" for i, (e, a) in
            enumerate(ranked["roar"])]
  lines += ["", "KAR (best first: highest accuracy keeping only its most "
            "important pixels):", ""]
  lines += [f"{i + 1}. {e} ({_fmt(a)})" for i, (e, a) in
            enumerate(ranked["kar"])]
  lines += ["", "An estimator is informative only where it beats `random`.",
            "", "Plots: roar.png, kar.png, no_retrain.png.", ""]
  if config is not None:
    lines += ["## Config", "", f"config hash `{results_lib.config_hash(config)}`",
              "", "```", str(config), "```", ""]
  workdir_lib.write_text(path, "\n".join(lines))
