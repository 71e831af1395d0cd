"""summary.md and index.html hold what a verdict needs, for every stage.

A toy grid is laid down as a finished run leaves it (`finished_runs`), with
stored no-retrain metric records and leakage probes under the plan's
fingerprints, so `--mode=report`, the metrics stage and the sanity report
build their pages without training. Every table is checked cell by cell
against the CSV file it shows, in both renderings.
"""

import csv
import html.parser
import math
import os
import types

from matplotlib import figure as mfigure
import pandas as pd
import pytest

import finished_runs
from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import grid
from roar_jax.benchmark.roar import leakage
from roar_jax.benchmark.roar import metrics
from roar_jax.benchmark.roar import pipeline
from roar_jax.benchmark.roar import report_notes
from roar_jax.benchmark.roar import report_page
from roar_jax.benchmark.roar import results
from roar_jax.benchmark.roar import statistics
from roar_jax.benchmark.roar import tables
from roar_jax.benchmark.sanity import report as sanity_report

# Mask-only accuracies per probe seed: gradient's mask leaks (its interval
# lies above chance, 25%), oracle's and random's do not.
PROBES = {"gradient": (0.62, 0.64, 0.66), "oracle": (0.24, 0.27, 0.30),
          "random": (0.25, 0.25, 0.26)}
LEAKAGE = "Mask leakage: the mask alone"
METRICS = "No-retrain metrics"
AGREEMENT = "Do the metrics agree?"
STABILITY = "Rank stability across seeds"
# The dataset as the metrics stage reads it (its records are all stored).
SOURCE = types.SimpleNamespace(info=types.SimpleNamespace(num_classes=4))


def _png(path, size=1):
  fig = mfigure.Figure(figsize=(size, size))
  fig.subplots().plot([0, 1])
  workdir_lib.save_figure(fig, str(path), dpi=20)


def lay_down_stages(config, root):
  """A finished grid (every retrain at 25%) with metric records and probes
  stored under the plan's fingerprints."""
  plan = finished_runs.lay_down(config, root, accuracy=0.25)
  for i, (est, a) in enumerate(sorted(
      metrics.plan_artifacts(config, plan).items())):
    values = {name: {"value": 0.1 * (i + 1) + 0.01 * j,
                     "ci95_low": 0.1 * (i + 1) + 0.01 * j - 0.02,
                     "ci95_high": 0.1 * (i + 1) + 0.01 * j + 0.02, "n": 40,
                     "fractions": [0.0, 0.5, 1.0], "curve": [0.9, 0.5, 0.1]}
              for j, name in enumerate(metrics.METRICS)}
    workdir_lib.write_json(a.path, {
        "estimator": est, "metrics": values, "num_images": 40,
        "fingerprint": a.fingerprint, "provenance": dict(a.record)})
  for (est, mode, thr), (_, rec) in leakage.plan_artifacts(config,
                                                           plan).items():
    workdir_lib.write_json(rec.path, {
        "estimator": est, "mode": mode, "threshold": thr, "chance": 0.25,
        **leakage.seed_summary(PROBES[est]), "fingerprint": rec.fingerprint,
        "provenance": dict(rec.record)})
  return plan


def toy_config():
  return finished_runs.toy_grid(num_seeds=2, thresholds=(0.9,))


@pytest.fixture(name="toy", scope="module")
def _toy(tmp_path_factory):
  """The grid's report of the toy run, with the other stages' figures."""
  return toy_report(tmp_path_factory.mktemp("toy"))


def toy_report(root):
  """Builds the toy grid's report in `root` (every stage's records laid
  down, the saliency and a sanity figure stood in); returns its folder."""
  config = toy_config()
  lay_down_stages(config, str(root))
  (root / "report").mkdir()
  _png(root / "report" / "saliency.png", size=2)
  _png(root / "report" / "sanity_cascading.png")
  pipeline.report(config, str(root), num_classes=4)
  return root / "report"


def _markdown(path) -> dict[str, dict]:
  """summary.md read back: {heading: {'text', 'bullets', 'tables'}}."""
  out, current = {}, None
  for line in open(path).read().splitlines():
    if line.startswith("#"):
      current = out.setdefault(line.lstrip("#").strip(), {
          "text": [], "bullets": [], "tables": []})
    elif current is None:
      continue
    elif line.startswith("| "):
      cells = [c.strip() for c in line.strip()[2:-2].split(" | ")]
      if not current["tables"] or current.get("_closed"):
        current["tables"].append([])
        current["_closed"] = False
      current["tables"][-1].append(cells)
    elif line.startswith("|---"):
      continue
    else:
      current["_closed"] = True
      if line.startswith("- "):
        current["bullets"].append(line[2:])
      elif line:
        current["text"].append(line)
  return out


class _Page(html.parser.HTMLParser):
  """Headings with the paragraphs, list items and tables under them."""

  def __init__(self):
    super().__init__(convert_charrefs=True)
    self.sections, self.current, self.tag, self.cell = {}, None, None, None

  def handle_starttag(self, tag, attrs):
    if tag in ("h1", "h2", "h3", "h4"):
      self.tag, self.heading = tag, ""
    elif tag == "table" and self.current is not None:
      self.current["tables"].append([])
    elif tag == "tr" and self.current is not None:
      self.current["tables"][-1].append([])
    elif tag in ("td", "th", "li", "p"):
      self.cell = ""

  def handle_data(self, data):
    if self.tag:
      self.heading += data
    elif self.cell is not None:
      self.cell += data

  def handle_endtag(self, tag):
    if tag == self.tag:
      self.current = self.sections.setdefault(self.heading.strip(), {
          "text": [], "bullets": [], "tables": []})
      self.tag = None
    elif tag in ("td", "th") and self.current is not None:
      self.current["tables"][-1][-1].append(self.cell.strip())
      self.cell = None
    elif tag in ("li", "p") and self.current is not None:
      key = "bullets" if tag == "li" else "text"
      self.current[key].append(self.cell.strip())
      self.cell = None


def _html(path) -> dict[str, dict]:
  parser = _Page()
  parser.feed(open(path).read())
  return parser.sections


def _both(folder):
  return [_markdown(folder / "summary.md"), _html(folder / "index.html")]


def _csv(path) -> list[dict[str, str]]:
  with open(path) as f:
    return list(csv.DictReader(f))


def _pct(v) -> str:
  return f"{100 * float(v):.2f}"


def _leakage_rows(folder) -> list[list[str]]:
  rows = []
  for r in _csv(folder / "leakage.csv"):
    leaks = float(r["ci95_low"]) > float(r["chance"])
    rows.append([r["mode"].upper(), f"{float(r['threshold']):.2f}",
                 r["estimator"],
                 f"{_pct(r['mask_only_accuracy'])} [{_pct(r['ci95_low'])}, "
                 f"{_pct(r['ci95_high'])}]", _pct(r["chance"]),
                 r["num_probe_seeds"],
                 ", ".join(_pct(a) for a in r["accuracy_by_seed"].split()),
                 "yes" if leaks else ""])
  return rows


def _four(v) -> str:
  return "–" if math.isnan(float(v)) else f"{float(v):.4f}"


def _check_leakage(folder, title):
  expected = _leakage_rows(folder)
  assert [r[2] for r in expected] == ["gradient", "oracle", "random"]
  assert [r[-1] for r in expected] == ["yes", "", ""]
  for page in _both(folder):
    assert title in page
    section = page[LEAKAGE]
    (table,) = section["tables"]
    assert table[0] == ["mode", "fraction", "estimator",
                        "mask alone % [95% CI]", "chance %", "probe seeds",
                        "by seed %", "leaks"]
    assert table[1:] == expected
    (warning,) = [t for t in section["text"] if t.startswith("Warning")]
    assert ("above chance beyond its 95% interval for gradient ROAR 90%. "
            in warning)
    assert "mask's shape" in warning and "noisy_linear" in warning


def _check_metrics(folder):
  rows = _csv(folder / "metrics.csv")
  names = [metrics.auc_name(m) for m in metrics.METRICS]
  for page in _both(folder):
    (table,) = page[METRICS]["tables"]
    assert table[0] == ["estimator", "images",
                        "deletion AUC [95% CI] (lower is better)",
                        "insertion AUC [95% CI] (higher is better)",
                        "road_morf AUC [95% CI] (lower is better)",
                        "road_lerf AUC [95% CI] (higher is better)"]
    shown = {r[0]: r for r in table[1:]}
    assert sorted(shown) == sorted({r["estimator"] for r in rows})
    for r in rows:
      cell = shown[r["estimator"]][2 + names.index(r["metric"])]
      assert cell == (f"{_four(r['value'])} [{_four(r['ci95_low'])}, "
                      f"{_four(r['ci95_high'])}]")
      assert shown[r["estimator"]][1] == r["n"]


def _check_agreement(folder):
  rows = _csv(folder / "agreement.csv")
  assert rows and all(r["n"] == "3" for r in rows)
  for page in _both(folder):
    section = page[AGREEMENT]
    (table,) = section["tables"]
    assert table[0] == ["metric a", "metric b", "Spearman", "estimators",
                        "which", "few estimators"]
    assert table[1:] == [[r["metric_a"], r["metric_b"], _four(r["spearman"]),
                          r["n"], r["estimators"].replace(";", ", "), "yes"]
                         for r in rows]
    assert any(t.startswith(f"Caveat: {len(rows)} of the {len(rows)} "
                            "correlations are over fewer than 4 estimators")
               for t in section["text"])


def _check_files(folder):
  names = sorted(os.listdir(folder))
  for page in _both(folder):
    listed = [b.split(":")[0] for b in page["Files"]["bullets"]]
    assert listed == names


def test_report_pages_show_the_leakage_table_and_warning(toy):
  _check_leakage(toy, "ROAR / KAR report: toy, small_cnn")
  # The verdict it qualifies carries the warning too.
  for page in _both(toy):
    assert any("above chance for gradient ROAR 90%" in t
               for t in page["Results"]["text"])


def test_report_pages_show_the_metrics_table(toy):
  _check_metrics(toy)


def test_report_pages_show_agreement_with_its_caveat(toy):
  _check_agreement(toy)


def test_report_files_list_is_what_the_folder_holds(toy):
  names = set(os.listdir(toy))
  assert {"leakage.csv", "metrics.csv", "agreement.csv", "comparisons.csv",
          "results_by_seed.csv", "rank_stability.csv", "roar.png",
          "roar.pdf", "metrics.png", "saliency.png"} <= names
  _check_files(toy)


def test_rank_stability_names_a_tie(toy):
  # Every retrain scored 25%: the three estimators tie in every seed.
  (row,) = _csv(toy / "rank_stability.csv")
  assert row["best_in_seeds"] == "0"
  for page in _both(toy):
    (table,) = page[STABILITY]["tables"]
    shown = dict(zip(table[0], table[1]))
    assert shown["best (mean over seeds)"] == "tied: gradient, oracle, random"
    assert shown["first in seeds"] == "0 of 2 (tied for first in 2 more)"


def _records(accuracies):
  """ROAR records at 90%: {estimator: accuracy per seed}."""
  return [{"estimator": e, "mode": "roar", "threshold": 0.9, "seed": s,
           "test_accuracy": a, "steps": 1, "wall_time_s": 0.0,
           "config_hash": "x"}
          for e, accs in accuracies.items() for s, a in enumerate(accs)]


def test_rank_stability_counts_first_places_alone_and_shared():
  cases = [
      # Gradient first alone in both seeds.
      ({"gradient": (0.2, 0.3), "oracle": (0.4, 0.5), "random": (0.6, 0.6)},
       "gradient", "2 of 2"),
      # Gradient best on average, first alone in seed 0, tied in seed 1.
      ({"gradient": (0.2, 0.4), "oracle": (0.5, 0.4), "random": (0.6, 0.6)},
       "gradient", "1 of 2 (tied for first in 1 more)"),
      # Equal means, each first in one seed.
      ({"gradient": (0.2, 0.4), "oracle": (0.4, 0.2), "random": (0.6, 0.6)},
       "tied: gradient, oracle", "1 of 2"),
  ]
  for accuracies, best, first in cases:
    frame = results.records_frame(_records(accuracies))
    table = tables.stability_table(statistics.rank_stability(frame),
                                   by_seed=frame)
    assert table["best (mean over seeds)"].tolist() == [best]
    assert table["first in seeds"].tolist() == [first]


def test_agreement_caveat_only_below_four_estimators():
  four = {"metric_a": "deletion_auc", "metric_b": "roar", "spearman": "0.8",
          "n": "4", "estimators": "a;b;c;d"}
  section = report_page.agreement_section([four])
  assert not any(t.startswith("Caveat") for t in section.paragraphs)
  assert section.tables[0]["few estimators"].tolist() == [""]
  three = {**four, "n": "3", "estimators": "a;b;c", "spearman": "0.5"}
  section = report_page.agreement_section([four, three])
  assert section.paragraphs[-1].startswith(
      "Caveat: 1 of the 2 correlations are over fewer than 4 estimators. "
      "Over 3 estimators rho takes only 4 values (1, 0.5, -0.5, -1)")
  assert section.tables[0]["few estimators"].tolist() == ["", "yes"]


def test_metrics_mode_writes_its_own_pages(tmp_path):
  config = toy_config()
  lay_down_stages(config, str(tmp_path))
  plan = grid.plan_of(config, str(tmp_path))
  # The records match: the stage computes and trains nothing.
  pipeline.staged_metrics(config, plan, SOURCE, None)
  folder = tmp_path / "report"
  assert sorted(os.listdir(folder)) == [
      "agreement.csv", "index.html", "leakage.csv", "metrics.csv",
      "metrics.pdf", "metrics.png", "summary.md"]
  _check_leakage(folder, "No-retrain metrics and mask leakage: toy, "
                 "small_cnn")
  _check_metrics(folder)
  _check_agreement(folder)
  _check_files(folder)
  summary = (folder / "summary.md").read_text()
  assert "Chance: 1/4 = 25.00%." in summary
  assert report_notes.GRID_REPORT_NOTE in summary
  assert "![metrics.png](metrics.png)" in summary


def test_metrics_mode_leaves_the_grids_pages_to_it(tmp_path):
  config = toy_config()
  plan = lay_down_stages(config, str(tmp_path))
  pipeline.report(config, str(tmp_path), num_classes=4)
  folder = tmp_path / "report"
  pages = {n: (folder / n).read_bytes() for n in ("summary.md", "index.html")}
  pipeline.staged_metrics(config, plan, SOURCE, None)
  assert {n: (folder / n).read_bytes() for n in pages} == pages
  assert pages["summary.md"].startswith(b"# ROAR / KAR report")


def test_sanity_mode_writes_pages_with_what_the_folder_holds(tmp_path):
  wd = workdir_lib.Workdir(str(tmp_path))
  config = toy_config()
  plan = lay_down_stages(config, str(tmp_path))
  leakage.write_csv(wd, leakage.stored_rows(config, plan))
  out = sanity_report.build_report(wd, [])
  folder = tmp_path / "report"
  assert str(folder / "summary.md") in out["files"]
  _check_leakage(folder, sanity_report.TITLE)
  _check_files(folder)
  assert (folder / "summary.md").read_text().startswith(
      "# Sanity checks (Adebayo et al. 2018)\n\nControls: ")
  # Once the grid's report is there, the pages are its own.
  (folder / "results.csv").write_text("the grid's\n")
  (folder / "summary.md").write_text("the grid's summary\n")
  sanity_report.build_report(wd, [])
  assert (folder / "summary.md").read_text() == "the grid's summary\n"


def test_sanity_sections_render_alike_in_markdown_and_html():
  table = pd.DataFrame({"estimator": ["gradient"], "ssim": ["0.500"]})
  sections = [report_page.html_page.Section(
      "sanity_cnn", bullets=["Test images: 40", "Seeds: init: 1"]),
              report_page.html_page.Section("Last step", tables=[table],
                                            level=3)]
  text = report_page.html_page.markdown("T", ["intro"], sections)
  assert text == ("# T\n\nintro\n\n## sanity_cnn\n\n- Test images: 40\n"
                  "- Seeds: init: 1\n\n### Last step\n\n"
                  "| estimator | ssim |\n|---|---|\n| gradient | 0.500 |\n")
  page = report_page.html_page.page("T", ["intro"], sections)
  assert "<ul><li>Test images: 40</li><li>Seeds: init: 1</li></ul>" in page
