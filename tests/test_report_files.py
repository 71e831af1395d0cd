"""The report's files: index.html, the figures, modes, determinism."""

import base64
import html.parser
import os
import random

from matplotlib import figure as mfigure
import numpy as np
import pytest

from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import figures, report, results

_VOID = {"meta", "img", "br", "hr", "link", "input", "col", "source", "wbr"}


class _Checker(html.parser.HTMLParser):
  """Checks that every element closes in order; collects img sources."""

  def __init__(self):
    super().__init__(convert_charrefs=True)
    self.stack, self.errors, self.images, self.doctype = [], [], [], None

  def handle_decl(self, decl):
    self.doctype = decl

  def handle_starttag(self, tag, attrs):
    if tag == "img":
      self.images.append(dict(attrs))
    if tag not in _VOID:
      self.stack.append(tag)

  def handle_startendtag(self, tag, attrs):
    self.handle_starttag(tag, attrs)
    if tag not in _VOID:
      self.stack.pop()

  def handle_endtag(self, tag):
    if not self.stack or self.stack[-1] != tag:
      self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
    else:
      self.stack.pop()


def _parse(text: str) -> _Checker:
  checker = _Checker()
  checker.feed(text)
  checker.close()
  return checker


def _record(est, mode, thr, seed, acc):
  return {"estimator": est, "mode": mode, "threshold": thr, "seed": seed,
          "test_accuracy": acc, "steps": 10, "wall_time_s": 1.0,
          "config_hash": "abc"}


def _grid(modes=("roar", "kar"), seeds=2):
  rng = np.random.default_rng(1)
  level = {"random": 0.6, "gradient": 0.4, "oracle": 0.3}
  recs = []
  for mode in modes:
    for est, acc in level.items():
      for thr in (0.25, 0.75):
        for seed in range(seeds):
          a = acc if mode == "roar" else 1.2 - acc
          recs.append(_record(est, mode, thr, seed,
                              float(a + rng.normal(0, 0.02))))
  no_retrain = {(r["estimator"], r["mode"], r["threshold"]): 0.3
                for r in recs}
  return recs, no_retrain


def _png(path):
  fig = mfigure.Figure(figsize=(1, 1))
  fig.subplots().plot([0, 1])
  workdir_lib.save_figure(fig, str(path), dpi=20)


def _config():
  from conftest import load_config  # pylint: disable=g-import-not-at-top
  return load_config("toy")


@pytest.fixture(name="built", scope="module")
def _built(tmp_path_factory):
  """A 2-seed ROAR+KAR report with the other stages' figures present."""
  root = tmp_path_factory.mktemp("report")
  for name in ("saliency.png", "metrics.png", "sanity_cascading.png",
               "sanity_data_maps_sanity_cnn.png"):
    _png(root / "report" / name)
  recs, no_retrain = _grid()
  config = _config()
  old = os.umask(0o022)
  try:
    out = report.build_report(workdir_lib.Workdir(root), recs, no_retrain,
                              config=config, expected_units=len(recs),
                              base_accuracy=0.92)
  finally:
    os.umask(old)
  return root, recs, no_retrain, config, out


def test_index_html_embeds_every_figure_and_parses(built):
  root, _, _, config, _ = built
  folder = root / "report"
  page = (folder / "index.html").read_text()
  checker = _parse(page)
  assert checker.doctype == "DOCTYPE html"
  assert not checker.errors and not checker.stack
  expected = ["roar.png", "kar.png", "saliency.png", "metrics.png",
              "sanity_cascading.png", "sanity_data_maps_sanity_cnn.png"]
  assert [img["alt"] for img in checker.images] == expected
  assert page.count("data:image/png;base64,") == len(expected)
  for img in checker.images:
    assert img["src"].startswith("data:image/png;base64,")
    data = base64.b64decode(img["src"].split(",", 1)[1])
    assert data == (folder / img["alt"]).read_bytes()
  # Self-contained: nothing is fetched from elsewhere.
  assert "src=\"http" not in page and "<link" not in page
  assert results.config_hash(config) in page
  assert "<table" in page and "Kendall" in page
  assert "95% CI" in page


def test_summary_embeds_figures_and_names_the_run(built):
  root, recs, _, config, out = built
  summary = (root / "report" / "summary.md").read_text()
  for name in ("roar.png", "kar.png", "saliency.png",
               "sanity_cascading.png"):
    assert f"]({name})" in summary
  assert summary.startswith("# ROAR / KAR report: toy, small_cnn\n")
  assert f"{len(recs)} retrains (2 seeds)." in summary
  assert "Chance: 1/4 = 25.00%." in summary  # From config.data.toy.
  assert f"config hash `{results.config_hash(config)}`" in summary
  assert not out["partial"] and out["modes"] == ["roar", "kar"]
  # Every (estimator, mode, fraction) but the control has a verdict.
  verdicts = [line for line in summary.splitlines()
              if line.startswith("| 0.") and ("than random (Holm p" in line
                                              or "not distinguishable" in line)]
  assert len(verdicts) == 2 * 2 * 2


def test_report_files_are_0644_under_umask_022(built):
  root = built[0]
  names = sorted(os.listdir(root / "report"))
  for name in ("results.csv", "rank_stability.csv", "roar.png", "roar.pdf",
               "kar.png", "kar.pdf", "summary.md", "index.html"):
    assert name in names
    assert (root / "report" / name).stat().st_mode & 0o777 == 0o644, name


def test_rerun_is_byte_identical_whatever_the_record_order(built):
  root, recs, no_retrain, config, _ = built
  folder = root / "report"
  before = {n: (folder / n).read_bytes() for n in os.listdir(folder)}
  shuffled = list(recs)
  random.Random(3).shuffle(shuffled)
  report.build_report(workdir_lib.Workdir(root), shuffled,
                      dict(reversed(list(no_retrain.items()))),
                      config=config, expected_units=len(recs),
                      base_accuracy=0.92)
  after = {n: (folder / n).read_bytes() for n in os.listdir(folder)}
  assert after.keys() == before.keys()
  assert [n for n in before if after[n] != before[n]] == []


def test_a_mode_not_run_gets_no_figure(tmp_path):
  recs, no_retrain = _grid(modes=("roar",), seeds=1)
  out = report.build_report(workdir_lib.Workdir(tmp_path), recs, no_retrain,
                            num_classes=10, dataset="mydata", model="resnet18")
  assert out["modes"] == ["roar"]
  names = set(os.listdir(tmp_path / "report"))
  assert {"roar.png", "roar.pdf"} <= names
  assert not names & {"kar.png", "kar.pdf", "no_retrain.png"}
  page = (tmp_path / "report" / "index.html").read_text()
  assert page.count("data:image/png;base64,") == 1
  summary = (tmp_path / "report" / "summary.md").read_text()
  assert "](kar.png)" not in summary and "### KAR" not in summary
  assert "ROAR / KAR report: mydata, resnet18" in summary


def test_mode_figure_axes_lines_and_anchor():
  recs, no_retrain = _grid(seeds=3)
  frame = results.aggregate_frame(recs, no_retrain)
  style_of = figures.styles(sorted(set(frame["estimator"])))
  assert style_of["random"]["color"] == "black"
  assert style_of["random"]["marker"] == "X"
  assert len({s["marker"] for s in style_of.values()}) == len(style_of)
  for mode, anchor_x in (("roar", 0.0), ("kar", 1.0)):
    fig = figures.mode_figure(frame[frame["mode"] == mode], mode,
                              style_of=style_of, base_accuracy=0.92,
                              num_classes=4, dataset="toy", model="cnn")
    (ax,) = fig.axes
    assert ax.get_ylim() == (0.0, figures.Y_TOP)
    title = ax.get_title()
    assert "toy" in title and "cnn" in title and "3 seeds" in title
    lines = ax.get_lines()
    # Horizontal reference lines: the base accuracy and chance.
    flat = {round(float(l.get_ydata()[0]), 6) for l in lines
            if len(set(np.asarray(l.get_ydata(), float))) == 1
            and l.get_marker() in ("None", None, "")}
    assert {0.92, 0.25} <= flat
    # Every curve, retrained (solid) and no-retrain (dashed), reaches the
    # base accuracy where nothing is degraded (at its estimator's offset).
    curves = [l for l in lines if len(l.get_xdata()) == 3]
    assert len(curves) == 2 * 3
    for line in curves:
      x = np.asarray(line.get_xdata(), float)
      y = np.asarray(line.get_ydata(), float)
      assert y[np.argmin(np.abs(x - anchor_x))] == pytest.approx(0.92)
    assert sorted(l.get_linestyle() for l in curves) == [
        "-", "-", "-", "--", "--", "--"]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "95% CI (Student t, 3 seeds)" in labels
    assert "chance (1/4)" in labels
