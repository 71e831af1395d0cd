"""The sanity checks' report: sanity.csv, similarity plots, map grids, summary.

`build_report(workdir, records)` writes under `<workdir>/report/`, every
file through the workdir's writer (`workdir.py`; local or gs://):

- `sanity.csv`: one row per (test, model, estimator, step, metric), with the
  mean and std over the images, the number of images with a defined value,
  the random-map floor beside it, and the settings every result depends on
  (re-initialization, BatchNorm, explained class, seed); then one row per
  (test, model, control, estimator, step, metric): the control's maps (kind
  'control', estimator 'random' or 'sobel') against that estimator's trained
  maps (column `reference`);
- `sanity_cascading.png`, `sanity_independent.png` (and, when run,
  `sanity_bottom_up.png`, `sanity_smprt.png`): similarity to the trained
  model's maps against the layers randomized (a line per estimator, the
  controls' min-max range per step as one hatched band, a panel per metric
  and model; the grey band is the random-map floor) (`figures.py`);
- `sanity_data.png`: similarity of the random-label model's maps to the
  true-label model's (a bar per estimator, the best control marked);
- every figure also as PDF (`sanity_*.pdf`);
- `sanity_cascading_maps_<model>.png` (the paper's Fig. 2: an image's maps
  across the cascading steps, controls included),
  `sanity_independent_maps_<model>.png`, `sanity_data_maps_<model>.png`;
- `sanity.md`: the settings, the data-randomization accuracies, and which
  estimators beat the controls (`verdicts.py`), each verdict with the
  standard error of its difference;
- `summary.md` and `index.html`, unless the folder holds the grid's report
  (which then owns them): sanity.md's sections, the figures and whatever
  else the folder holds, through the page builder every stage shares
  (`roar/report_page.py`).

Nothing in it depends on the time of the run: an unchanged rerun writes the
same bytes.
"""

import csv
import io
import math
from typing import Any, Mapping, Sequence

import pandas as pd

from roar_jax import report_folder
from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import html_page
from roar_jax.benchmark.roar import report_page
from roar_jax.benchmark.sanity import figures
from roar_jax.benchmark.sanity import verdicts as verdicts_lib

CSV_COLUMNS = ("test", "model", "estimator", "kind", "reference", "step",
               "step_name", "layers", "metric", "mean", "std", "n",
               "floor_mean", "floor_std", "model_accuracy", "same_prediction",
               "status", "init", "init_std", "reset_batch_stats", "batch_norm",
               "target", "seed", "num_images", "train_accuracy",
               "test_accuracy", "trained_test_accuracy")
NUMERIC = ("step", "mean", "std", "n", "floor_mean", "floor_std",
           "model_accuracy", "same_prediction", "init_std", "seed",
           "num_images", "train_accuracy", "test_accuracy",
           "trained_test_accuracy")
settings_line = figures.settings_line
TITLE = "Sanity checks (Adebayo et al. 2018)"
TEST_TITLES = figures.TEST_TITLES
# The tests whose similarity is a curve over the layers randomized.
CURVE_TESTS = ("cascading", "independent", "bottom_up", "smprt")


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
    out += [{**common, "kind": "estimator", **row} for row in rec["rows"]]
    out += [{**common, "kind": "control", **row}
            for row in rec.get("control_rows", ())]
  return out


def write_csv(path: str, rows: Sequence[Mapping[str, Any]]):
  workdir_lib.write_csv(path, [{k: _fmt(v) for k, v in row.items()
                                if v is not None} for row in rows],
                        CSV_COLUMNS)


def read_csv(path) -> list[dict[str, Any]]:
  """sanity.csv back as dicts, numbers as floats (empty cells as None)."""
  text = workdir_lib.read_bytes(str(path)).decode()
  rows = list(csv.DictReader(io.StringIO(text)))
  for r in rows:
    for k in NUMERIC:
      r[k] = float(r[k]) if r.get(k) not in (None, "") else None
  return rows


def _model_bullets(recs) -> list[str]:
  """The settings of one model's checks and its random-label model."""
  meta = recs[0]["meta"]
  lines = [f"True-label model test accuracy: "
           f"{100 * meta['trained_test_accuracy']:.2f}%",
           f"Re-initialization: {meta['init_description']}",
           f"BatchNorm statistics: {meta['batch_norm']}",
           f"Class explained: {meta['target_description']}",
           f"Test images: {meta['num_images']}",
           f"Controls: {', '.join(meta.get('controls', [])) or 'none'}"]
  for est, why in sorted(meta.get("skipped_estimators", {}).items()):
    lines.append(f"Skipped estimator {est}: {why}")
  lines.append("Seeds: " + "; ".join(f"{k}: {v}"
                                     for k, v in meta["seeds"].items()))
  for rec in recs:
    if rec["test"] != "data":
      continue
    d = rec["data"]
    verdict = ("maps compared" if rec["status"] == "compared" else
               f"maps NOT compared: below the floor of "
               f"{100 * d['min_train_accuracy']:.0f}%")
    lines.append(
        f"Random-label model: {100 * d['train_accuracy']:.2f}% training "
        f"accuracy on {d['num_train']} images with permuted labels, "
        f"{100 * d['test_accuracy']:.2f}% test accuracy (chance "
        f"{100 * d['chance']:.0f}%), {d['steps']} steps; {verdict}.")
  return lines


def _last_step_section(rec) -> html_page.Section:
  metrics = figures.metrics_in(rec["rows"])
  last = max(r["step"] for r in rec["rows"])
  rows = []
  for est in dict.fromkeys(r["estimator"] for r in rec["rows"]):
    row = {"estimator": est}
    for m in metrics:
      r = next(x for x in rec["rows"] if x["estimator"] == est
               and x["metric"] == m and x["step"] == last)
      row[m] = (f"{r['mean']:.3f} ± {r['std']:.3f} "
                f"(floor {r['floor_mean']:.3f})")
    rows.append(row)
  return html_page.Section(
      f"{TEST_TITLES[rec['test']]}: step {last} "
      f"({rec['steps'][last]['name']})",
      tables=[pd.DataFrame(rows, columns=["estimator", *metrics])], level=3)


def verdict_cell(v: Mapping[str, Any]) -> str:
  """'beats: 0.120 vs sobel 0.450 (difference -0.330 ± SE 0.012)': the
  verdict, both means and the standard error of their difference."""
  return (f"{'beats' if v['beats'] else 'does not beat'}: {v['mean']:.3f} vs "
          f"{v['control']} {v['control_mean']:.3f} (difference "
          f"{v['mean'] - v['control_mean']:+.3f} ± SE {v['se']:.3f})")


def _verdict_section(rec) -> list[html_page.Section]:
  metrics = figures.metrics_in(rec["rows"])
  table = verdicts_lib.verdicts(rec, metrics)
  if not table:
    return []
  rows, always = [], []
  for est, per in table.items():
    row = {"estimator": est}
    for m in metrics:
      v = per.get(m)
      row[m] = "n/a" if v is None else verdict_cell(v)
    rows.append(row)
    if all(per.get(m, {}).get("beats") for m in metrics):
      always.append(est)
  return [html_page.Section(
      f"Against the controls ({rec['test']})",
      tables=[pd.DataFrame(rows, columns=["estimator", *metrics])],
      paragraphs=[f"Estimators that beat the controls on every metric: "
                  f"{', '.join(always) or 'none'}. SE: the standard error of "
                  "the difference, sqrt(std_E^2/n_E + std_C^2/n_C); beating "
                  "needs a difference below -2 SE."], level=4)]


def summary_sections(records) -> list[html_page.Section]:
  """Per model: its settings, the last step's similarities, the verdicts
  against the controls."""
  out = []
  for model in sorted({r["model"] for r in records}):
    recs = [r for r in records if r["model"] == model]
    out.append(html_page.Section(model, bullets=_model_bullets(recs)))
    for rec in recs:
      if not rec["rows"]:
        continue
      out.append(_last_step_section(rec))
      if rec["test"] in verdicts_lib.VERDICT_TESTS:
        out += _verdict_section(rec)
  return out


def summary_text(records) -> str:
  """sanity.md."""
  return html_page.markdown(TITLE, _intro(), summary_sections(records))


def _intro() -> list[str]:
  return ["Controls: " + verdicts_lib.DEFINITION]


def build_report(workdir, records: Sequence[Mapping[str, Any]], *,
                 pages: bool | None = None) -> dict[str, Any]:
  """Writes every report file for `records` (sanity.run's records).

  Args:
    workdir: the experiment workdir (a path or `workdir.Workdir`); files go
      to `<workdir>/report/`; the map grids read each record's
      `maps_files`.
    records: one record per (model, test).
    pages: also write summary.md and index.html (`report_page`: these
      sections, then what else the folder holds); default: unless the
      folder holds the grid's report, which owns them.

  Returns:
    {'files': [paths written], 'rows': the csv rows}.
  """
  wd = (workdir if isinstance(workdir, workdir_lib.Workdir)
        else workdir_lib.as_workdir(workdir))
  rows = csv_rows(records)
  write_csv(wd.report("sanity.csv"), rows)
  files = [wd.report("sanity.csv")]
  for test in CURVE_TESTS:
    path = wd.report(f"sanity_{test}.png")
    if figures.plot_randomization(path, records, test):
      files += [path, figures.pdf_path(path)]
  if figures.plot_data(wd.report("sanity_data.png"), records):
    path = wd.report("sanity_data.png")
    files += [path, figures.pdf_path(path)]
  for rec in records:
    path = wd.report(f"sanity_{rec['test']}_maps_{rec['model']}.png")
    if rec["status"] == "compared" and figures.plot_map_grid(path, rec):
      files += [path, figures.pdf_path(path)]
  workdir_lib.write_text(wd.report("sanity.md"), summary_text(records))
  files.append(wd.report("sanity.md"))
  if pages is None:
    pages = not report_folder.has_grid_report(wd)
  if pages:
    # Last: the pages list every file written above.
    report_page.write(wd, TITLE, _intro(),
                      summary_sections(records)
                      + report_page.folder_sections(wd))
    files += [wd.report(n) for n in report_folder.PAGES]
  return {"files": files, "rows": rows}
