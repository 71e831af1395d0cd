"""The ROAR/KAR report: tables, figures, a markdown summary and one HTML page.

`build_report` can run at any time: it reads whatever results exist, so a
partial grid gives a partial report, marked as such. It writes under
`W/report/`:

- `results.csv`: one row per (estimator, mode, threshold, fill): the
  contract columns, a 95% Student-t interval over seeds (`ci95_low`,
  `ci95_high`), the paired t-test's p-value against `random` at the same
  mode, threshold and fill (`p_vs_random`), and the fill;
- `comparisons.csv`: every estimator against each of its controls (iid
  `random`, and the smoothness-matched control when the grid has one): the
  paired t-test's p, Holm's p and BH's q within the family, the per-image
  bootstrap interval of the difference and the minimum detectable difference
  (`comparisons.py`);
- `results_by_seed.csv`: one row per retrain with its accuracy and per-image
  record, from which every test above reruns;
- `rank_stability.csv`: how consistently the seeds order the estimators;
- `roar.png`/`.pdf`, `kar.png`/`.pdf`: one figure per mode that was run,
  retrained and no-retrain curves on the same axes, a panel per fill
  (`figures.py`);
- `agreement.csv` (given the metrics' rows) and `leakage.csv` (given the
  probes' rows);
- `summary.md` and `index.html` (`report_page.py`, the builder every stage
  shares): the tables with a verdict against `random` per estimator and
  threshold (`tables.py`), under each fill and, for several fills, side by
  side; the ranking and its stability, the figures; then what the folder
  holds of the other stages (the saliency grid, the leakage, no-retrain
  metrics and agreement tables, the sanity figures), the config and the
  list of every file written.

Nothing in them depends on the time or on the order of the records, so an
unchanged report is byte-identical.
"""

import csv
import io
from typing import Any

import pandas as pd

from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import agreement
from roar_jax.benchmark.roar import comparisons
from roar_jax.benchmark.roar import figures
from roar_jax.benchmark.roar import html_page
from roar_jax.benchmark.roar import leakage as leakage_lib
from roar_jax.benchmark.roar import report_notes as notes
from roar_jax.benchmark.roar import report_page
from roar_jax.benchmark.roar import results as results_lib
from roar_jax.benchmark.roar import statistics
from roar_jax.benchmark.roar import tables

# Re-exported: the config's helpers live with the page builder.
config_text = report_page.config_text
num_classes_of = report_page.num_classes_of
_config_get = report_page.config_get


def write_csv(path: str, frame: pd.DataFrame):
  """results.csv: REPORT_COLUMNS, 6 significant digits, NaN as 'nan'."""
  workdir_lib.write_text(path, frame[list(results_lib.REPORT_COLUMNS)].to_csv(
      index=False, float_format="%.6g", na_rep="nan", lineterminator="\n"))


def _write_frame(path: str, frame: pd.DataFrame):
  """A table as CSV: 6 significant digits, NaN (and None) as 'nan'."""
  workdir_lib.write_text(path, frame.to_csv(
      index=False, float_format="%.6g", na_rep="nan", lineterminator="\n"))


def read_csv(path: str) -> list[dict[str, Any]]:
  """results.csv back as dicts: numbers as floats, num_seeds as int."""
  rows = list(csv.DictReader(io.StringIO(
      workdir_lib.read_bytes(path).decode())))
  numeric = set(results_lib.REPORT_COLUMNS) - {"estimator", "mode", "fill",
                                                "num_seeds"}
  for r in rows:
    for k in numeric & set(r):
      r[k] = float(r[k])
    r["num_seeds"] = int(r["num_seeds"])
  return rows


def rank_estimators(rows, fill: str | None = None
                    ) -> dict[str, list[tuple[str, float]]]:
  """Estimators ordered best first, per mode.

  ROAR: a better estimator's removed pixels matter more, so the retrained
  accuracy is LOWER (ordered by mean accuracy over thresholds, ascending).
  KAR: a better estimator's kept pixels suffice, so accuracy is HIGHER.

  Args:
    rows: aggregated rows (dicts, or a DataFrame).
    fill: rank the rows of this fill only (rows without a fill column, or
      None: every row; do not mix fills).

  Returns:
    mode -> [(estimator, mean accuracy over its thresholds)], best first.
  """
  frame = pd.DataFrame(list(rows) if not isinstance(rows, pd.DataFrame)
                       else rows)
  if fill is not None and "fill" in frame:
    frame = frame[frame["fill"] == fill]
  frame = frame.reindex(columns=["estimator", "mode", "mean_accuracy"])
  frame = frame.dropna(subset=["mean_accuracy"])
  ranked = {}
  for mode, best_low in (("roar", True), ("kar", False)):
    scores = frame[frame["mode"] == mode].groupby("estimator")[
        "mean_accuracy"].mean().sort_index()
    scores = scores.sort_values(ascending=best_low, kind="stable")
    ranked[mode] = [(e, float(a)) for e, a in scores.items()]
  return ranked


def _context(records, frame, *, config, expected_units, base_accuracy,
             num_classes, dataset, model) -> dict[str, Any]:
  """What the summary and the page say about the run."""
  return {
      "num_results": len(records),
      "partial": expected_units is not None and len(records) < expected_units,
      "expected_units": expected_units,
      "base_accuracy": base_accuracy,
      "num_classes": num_classes,
      "dataset": dataset or _config_get(config, "data", "name") or "",
      "model": model or _config_get(config, "model", "name") or "",
      "seeds": figures.seeds_text(frame["num_seeds"]),
      "config": config,
  }


def _intro(ctx) -> list[str]:
  lines = []
  if ctx["partial"]:
    lines.append(f"Partial report: {ctx['num_results']} of "
                 f"{ctx['expected_units']} retrains have finished; rerun the "
                 "grid to complete it.")
  else:
    lines.append(f"{ctx['num_results']} retrains ({ctx['seeds']}).")
  if ctx["base_accuracy"] is not None:
    lines.append(f"Base model (unmodified data) test accuracy: "
                 f"{100 * ctx['base_accuracy']:.2f}%.")
  if ctx["num_classes"]:
    lines.append(f"Chance: 1/{ctx['num_classes']} = "
                 f"{100 / ctx['num_classes']:.2f}%.")
  return lines


def _title(ctx) -> str:
  what = ", ".join(p for p in (ctx["dataset"], ctx["model"]) if p)
  return "ROAR / KAR report" + (f": {what}" if what else "")


def _captions(frame, modes, ctx) -> dict[str, str]:
  several = len(tables.fills(frame)) > 1
  return {m: figures.caption(
      m, base_accuracy=ctx["base_accuracy"], num_classes=ctx["num_classes"],
      has_ci=bool(frame.loc[frame["mode"] == m, "ci95_low"].notna().any()),
      fills=tables.fills(frame) if several else ()) for m in modes}


def _ranking_note(frame) -> str:
  if (frame["num_seeds"] == 1).any():
    return ("Single seed: this ordering is not tested. " + notes.RANK_NOTE)
  return notes.RANK_NOTE


def _ranking_lines(frame) -> list[str]:
  """One line per (mode, fill): the estimators, best first."""
  several = len(tables.fills(frame)) > 1
  lines = []
  for fill in tables.fills(frame):
    for mode, ranked in rank_estimators(frame, fill).items():
      if ranked:
        where = f", fill {fill}" if several else ""
        lines.append(f"{notes.RANK_HEADINGS[mode]}{where}: " + ", ".join(
            f"{i + 1}. {e} ({tables.pct(a)})"
            for i, (e, a) in enumerate(ranked)))
  return lines


def _leak_warning(frame, leakage) -> list[str]:
  """A warning naming the tested verdicts whose masks leak, if any."""
  cells = sorted({(r.estimator, r.mode, r.threshold)
                  for r in frame.itertuples(index=False)
                  if r.estimator != comparisons.RANDOM and r.num_seeds >= 2
                  and (p := leakage.get((r.estimator, r.mode,
                                         round(r.threshold, 4))))
                  and tables.leaks(p)})
  if not cells:
    return []
  names = ", ".join(f"{e} {m.upper()} {100 * t:.0f}%" for e, m, t in cells)
  return [f"Warning: the removal mask alone predicts the class above chance "
          f"for {names}. " + notes.LEAK_NOTE]


def _sections(frame, stability, compared, leakage, by_seed
              ) -> list[html_page.Section]:
  """Results, fills side by side, ranking and stability, for both the
  summary and the page."""
  several = len(tables.fills(frame)) > 1
  smooth = bool((compared["control"] != comparisons.RANDOM).any())
  out = [html_page.Section(
      "Results",
      [notes.RESULTS_NOTE] + ([notes.SMOOTH_NOTE] if smooth else [])
      + _leak_warning(frame, leakage))]
  out += [html_page.Section(
      tables.panel_title(mode, fill, several),
      tables=[tables.results_table(frame, mode, fill, compared, leakage)],
      level=3) for mode, fill in tables.panels(frame)]
  if several:
    out.append(html_page.Section("Fills side by side", [notes.FILLS_NOTE]))
    out += [html_page.Section(mode.upper(),
                              tables=[tables.fills_table(frame, mode)],
                              level=3)
            for mode in sorted(set(frame["mode"]), key=tables.mode_order)]
  out += [
      html_page.Section("Estimators ranked",
                        _ranking_lines(frame) + [_ranking_note(frame)]),
      html_page.Section("Rank stability across seeds", [notes.STABILITY_NOTE],
                        tables=[tables.stability_table(stability, several,
                                                      by_seed)]),
  ]
  return out


def _figures_section(wd, frame, modes, ctx) -> list[html_page.Section]:
  """The mode figures with their captions (the PDF named in each)."""
  if not modes:
    return []
  captions = _captions(frame, modes, ctx)
  return [html_page.Section("Figures", figures=[
      report_page.figure(wd, f"{m}.png", f"{captions[m]} (Also {m}.pdf.)")
      for m in modes])]


def _write_tables(wd: workdir_lib.Workdir, frame, compared, by_seed,
                  stability, metric_rows, leakage_rows):
  """The report's CSV files: results, comparisons, results by seed, rank
  stability, and agreement and leakage when given their rows."""
  write_csv(wd.report("results.csv"), frame)
  _write_frame(wd.report("comparisons.csv"), compared)
  _write_frame(wd.report("results_by_seed.csv"), by_seed)
  _write_frame(wd.report("rank_stability.csv"), stability)
  if metric_rows:
    agreement.write(wd, metric_rows, read_csv(wd.report("results.csv")))
  if leakage_rows is not None:
    leakage_lib.write_csv(wd, leakage_rows)


def build_report(wd: workdir_lib.Workdir, records, no_retrain, *,
                 config=None, expected_units: int | None = None,
                 base_accuracy: float | None = None,
                 num_classes: int | None = None,
                 dataset: str | None = None,
                 model: str | None = None,
                 leakage_rows=None, metric_rows=None) -> dict[str, Any]:
  """Writes `W/report/`: results.csv, comparisons.csv, results_by_seed.csv,
  rank_stability.csv, a figure per mode run (PNG and PDF), agreement.csv and
  leakage.csv when given their inputs, then summary.md and index.html.

  Args:
    wd: the experiment workdir.
    records: the result records to count (those of the current config).
    no_retrain: (estimator, mode, threshold, fill) -> accuracy of the base
      model on that degraded test split, without retraining (a key without
      the fill: `levels.UNNAMED_FILL`'s).
    config: the experiment config, quoted with its hash.
    expected_units: how many retrains the full grid has; fewer results mark
      the report partial.
    base_accuracy: the unmodified base model's test accuracy.
    num_classes: the number of classes, for the chance line (default: what
      the config states, see `num_classes_of`; no line when unknown).
    dataset, model: the names in titles (default: config.data.name,
      config.model.name).
    leakage_rows: the leakage probes' rows (`leakage.stored_rows`): each
      results table shows the mask-only accuracy, and a verdict whose mask
      leaks is named in a warning; written to leakage.csv.
    metric_rows: the no-retrain metrics' rows (metrics.csv, already in the
      folder): agreement.csv ranks them with ROAR and KAR.

  Returns:
    {'rows': aggregated rows (REPORT_COLUMNS), 'partial': bool,
     'num_results': int, 'modes': the modes drawn}.
  """
  records = list(records)
  leakage = tables.leakage_by_key(leakage_rows)
  by_seed = results_lib.records_frame(records)
  compared = comparisons.compare(by_seed)
  frame = results_lib.aggregate_frame(records, no_retrain, compared)
  stability = statistics.rank_stability(by_seed)
  ctx = _context(records, frame, config=config, expected_units=expected_units,
                 base_accuracy=base_accuracy,
                 num_classes=num_classes or num_classes_of(config),
                 dataset=dataset, model=model)
  _write_tables(wd, frame, compared, by_seed, stability, metric_rows,
                leakage_rows)
  modes = figures.write_mode_figures(
      wd, frame, base_accuracy=base_accuracy, num_classes=ctx["num_classes"],
      dataset=ctx["dataset"], model=ctx["model"])
  # Last: the pages list every file written above.
  report_page.write(
      wd, _title(ctx), _intro(ctx),
      _figures_section(wd, frame, modes, ctx)
      + _sections(frame, stability, compared, leakage, by_seed)
      + report_page.folder_sections(wd),
      config=ctx["config"], strong_first=ctx["partial"])
  return {"rows": results_lib.rows_of(frame), "partial": ctx["partial"],
          "num_results": len(records), "modes": modes}
