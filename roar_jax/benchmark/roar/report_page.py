"""summary.md and index.html: the one page builder of every stage.

The grid's report (`report.py`), the metrics stage (`--mode=metrics`) and the
sanity checks (`--mode=sanity`) each write `W/report/summary.md` and
`W/report/index.html` through `write`: their own sections first, then what
any page shows of the folder (`folder_sections`: the saliency maps, the
leakage probes with a warning where a mask leaks, the no-retrain metrics,
the metrics' agreement, the sanity figures, each table built from the CSV
file the folder holds), the config and a list of every file in the folder
with what it holds. The page is built after every other file is written, so
the list is what the folder holds, not a list kept by hand.

A grid's report owns the pages once it exists (`has_grid_report`): the
metrics stage and the sanity checks then leave them to it, and a later
`--mode=report` shows their new files.
"""

import csv
import io
from typing import Any, Sequence

from roar_jax import report_folder
from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import html_page
from roar_jax.benchmark.roar import report_notes as notes
from roar_jax.benchmark.roar import results as results_lib
from roar_jax.benchmark.roar import tables

PAGES = report_folder.PAGES
has_grid_report = report_folder.has_grid_report
_SALIENCY = "saliency.png"
_METRICS = "metrics.png"


def config_get(config, *path):
  """config.<path>, or None where a key is missing."""
  node = config
  for key in path:
    if node is None or not hasattr(node, "get"):
      return None
    node = node.get(key)
  return node


def num_classes_of(config) -> int | None:
  """The number of classes a config states (data.<name>.num_classes,
  data.num_classes or model.num_classes), or None."""
  name = config_get(config, "data", "name")
  for path in (("data", name, "num_classes"), ("data", "num_classes"),
               ("model", "num_classes")):
    if None not in path and (n := config_get(config, *path)):
      return int(n)
  return None


def config_text(config) -> str:
  """The config as sorted JSON (as W/config.json holds it)."""
  if hasattr(config, "to_json_best_effort"):
    return config.to_json_best_effort(indent=2, sort_keys=True)
  return str(config)


def read_rows(wd: workdir_lib.Workdir, name: str) -> list[dict[str, str]]:
  """A CSV file of the report folder as dicts of strings ([] if absent)."""
  if not workdir_lib.exists(wd.report(name)):
    return []
  text = workdir_lib.read_bytes(wd.report(name)).decode()
  return list(csv.DictReader(io.StringIO(text)))


def figure(wd: workdir_lib.Workdir, name: str, caption: str = ""
           ) -> html_page.Figure:
  """A PNG of the report folder, to embed."""
  return html_page.Figure(workdir_lib.read_bytes(wd.report(name)), name,
                          caption)


def leaking(rows) -> list[str]:
  """'estimator MODE fraction%' of each probe whose mask leaks."""
  return [f"{r['estimator']} {r['mode'].upper()} "
          f"{100 * float(r['threshold']):.0f}%" for r in rows
          if tables.leaks(r)]


def leakage_section(rows) -> html_page.Section:
  """The probes, with a warning naming the masks that leak."""
  paragraphs = [notes.LEAKAGE_TABLE_NOTE]
  if names := leaking(rows):
    paragraphs.append(notes.METRICS_LEAK_WARNING.format(
        names=", ".join(names)) + notes.LEAK_NOTE)
  return html_page.Section("Mask leakage: the mask alone", paragraphs,
                           tables=[tables.leakage_table(rows)])


def agreement_section(rows) -> html_page.Section:
  """The metrics' rank correlations, with a caveat for few estimators."""
  paragraphs = [notes.AGREEMENT_NOTE]
  few = [r for r in rows
         if int(r["n"]) < tables.MIN_AGREEMENT_ESTIMATORS]
  if few:
    paragraphs.append(notes.FEW_ESTIMATORS_NOTE.format(
        few=len(few), pairs=len(rows),
        least=tables.MIN_AGREEMENT_ESTIMATORS))
  return html_page.Section("Do the metrics agree?", paragraphs,
                           tables=[tables.agreement_table(rows)])


def folder_sections(wd: workdir_lib.Workdir) -> list[html_page.Section]:
  """What every page shows of the folder, for the files present."""
  names = workdir_lib.listdir(wd.report())
  out = []
  if _SALIENCY in names:
    out.append(html_page.Section("Saliency maps",
                                 figures=[figure(wd, _SALIENCY)]))
  if leakage := read_rows(wd, "leakage.csv"):
    out.append(leakage_section(leakage))
  metric_rows = read_rows(wd, "metrics.csv")
  if metric_rows or _METRICS in names:
    out.append(html_page.Section(
        "No-retrain metrics", [notes.METRICS_NOTE] if metric_rows else [],
        tables=[tables.metrics_table(metric_rows)] if metric_rows else [],
        figures=[figure(wd, _METRICS)] if _METRICS in names else []))
  if agreement := read_rows(wd, "agreement.csv"):
    out.append(agreement_section(agreement))
  sanity = [n for n in names if n.startswith("sanity") and n.endswith(".png")]
  if sanity:
    out.append(html_page.Section("Sanity checks",
                                 figures=[figure(wd, n) for n in sanity]))
  return out


def _file_note(name: str) -> str:
  note = notes.FILE_NOTES.get(name) or next(
      (v for k, v in notes.FILE_PREFIX_NOTES.items() if name.startswith(k)),
      "")
  return f"{name}: {note}" if note else name


def files_section(wd: workdir_lib.Workdir) -> html_page.Section:
  """Every file of the report folder, this page's two included."""
  names = sorted(set(workdir_lib.listdir(wd.report())) | set(PAGES))
  return html_page.Section(
      "Files", ["Every file the report folder holds:"],
      bullets=[_file_note(n) for n in names if not n.startswith(".")])


def write(wd: workdir_lib.Workdir, title: str, intro: Sequence[str],
          sections: Sequence[html_page.Section], *, config=None,
          strong_first: bool = False):
  """Writes summary.md and index.html: `sections`, the config, the files.

  Call it after every other file of the report is written.

  Args:
    wd: the workdir whose report folder gets the pages.
    title: the page's title.
    intro: paragraphs under the title.
    sections: the stage's sections (with `folder_sections` as it wants).
    config: the experiment config, quoted with its hash.
    strong_first: the first intro line in bold in the markdown (a partial
      report).
  """
  sections = list(sections)
  if config is not None:
    sections.append(html_page.Section(
        "Config", [f"config hash `{results_lib.config_hash(config)}` (its "
                   "fingerprint)"], preformatted=config_text(config)))
  sections.append(files_section(wd))
  workdir_lib.write_text(wd.report("summary.md"), html_page.markdown(
      title, intro, sections, strong_first=strong_first))
  workdir_lib.write_text(wd.report("index.html"),
                         html_page.page(title, intro, sections))


def stage_title(what: str, config) -> str:
  """'<what>: <dataset>, <model>' from the config."""
  names = [n for n in (config_get(config, "data", "name"),
                       config_get(config, "model", "name")) if n]
  return what + (f": {', '.join(names)}" if names else "")


def chance_line(num_classes: int | None) -> list[str]:
  return ([f"Chance: 1/{num_classes} = {100 / num_classes:.2f}%."]
          if num_classes else [])


def write_metrics_page(wd: workdir_lib.Workdir, config,
                       num_classes: int | None = None) -> dict[str, Any]:
  """`--mode=metrics`'s pages: the leakage, metrics and agreement tables
  (and whatever else the folder holds)."""
  num_classes = num_classes or num_classes_of(config)
  write(wd, stage_title("No-retrain metrics and mask leakage", config),
        chance_line(num_classes) + [notes.GRID_REPORT_NOTE],
        folder_sections(wd), config=config)
  return {"pages": [wd.report(n) for n in PAGES]}
