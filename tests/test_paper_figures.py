"""Figures a paper can take: checked on the figure objects, not on pixels."""

import math

from matplotlib import collections as mcollections
from matplotlib import colors as mcolors
import ml_collections
import numpy as np
import pytest

from roar_jax import report_folder
from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import figures, metric_figures, metrics
from roar_jax.benchmark.roar import results, saliency_figure
from roar_jax.benchmark.sanity import figures as sanity_figures
from roar_jax.benchmark.sanity import report as sanity_report
from roar_jax.benchmark.sanity import verdicts
from roar_jax.data import synthetic
from roar_jax.saliency import visualize


def _is_pdf(path) -> bool:
  with open(path, "rb") as f:
    return f.read(5) == b"%PDF-"


# ----------------------------------------------------------------------------
# roar.png / kar.png


def _frame():
  """Three estimators with the same accuracies: every series overlaps."""
  recs = []
  for mode in ("roar", "kar"):
    for est in ("gradient", "oracle", "random"):
      for thr in (0.5, 0.9):
        for seed in range(3):
          recs.append({"estimator": est, "mode": mode, "threshold": thr,
                       "seed": seed, "test_accuracy": 1.0 - 0.01 * seed,
                       "steps": 10, "wall_time_s": 1.0,
                       "config_hash": "abc"})
  no_retrain = {(r["estimator"], r["mode"], r["threshold"]): 1.0
                for r in recs}
  return results.aggregate_frame(recs, no_retrain)


def _series(ax):
  """The plotted curves (lines with markers), not the reference lines or
  the error bars' caps (markers without a line)."""
  return [l for l in ax.get_lines() if l.get_marker() not in ("None", None, "")
          and l.get_linestyle() not in ("None", "") and len(l.get_xdata()) > 1]


def test_mode_figure_series_cannot_hide_each_other():
  frame = _frame()
  style_of = figures.styles(sorted(set(frame["estimator"])))
  fig = figures.mode_figure(frame[frame["mode"] == "kar"], "kar",
                            style_of=style_of, base_accuracy=1.0,
                            num_classes=4, dataset="toy", model="cnn")
  (ax,) = fig.axes
  bottom, top = ax.get_ylim()
  assert bottom == 0.0 and 1.0 < top <= 1.05
  series = _series(ax)
  assert len(series) == 6  # 3 retrained + 3 no-retrain.
  keys = [(l.get_marker(), l.get_linestyle(),
           mcolors.to_hex(l.get_color())) for l in series]
  assert len(set(keys)) == len(keys)
  # No-retrain: dashed with hollow (white) markers; retrained: solid, filled.
  for line in series:
    face = mcolors.to_hex(line.get_markerfacecolor())
    if line.get_linestyle() == "--":
      assert face == "#ffffff"
    else:
      assert line.get_linestyle() == "-" and face != "#ffffff"
  # Each estimator's x values are shifted by its own offset: at the same
  # fraction and accuracy the points do not coincide.
  offsets = figures.x_offsets(list(style_of))
  assert len(set(offsets.values())) == 3
  assert max(abs(v) for v in offsets.values()) <= figures.MAX_OFFSET
  at_half = sorted(float(x) for l in series for x in l.get_xdata()
                   if abs(x - 0.5) < 0.05)
  assert len(set(at_half)) == 3
  assert at_half[0] == pytest.approx(0.5 + min(offsets.values()))
  # One-line title; the legend says which style is which.
  assert "\n" not in ax.get_title() and "toy, cnn" in ax.get_title()
  labels = [t.get_text() for t in ax.get_legend().get_texts()]
  assert "no retraining (base model): dashed, hollow" in labels
  assert "retrained: solid, filled" in labels


def test_mode_figures_written_as_png_and_pdf(tmp_path):
  frame = _frame()
  wd = workdir_lib.Workdir(tmp_path)
  assert figures.write_mode_figures(wd, frame) == ["roar", "kar"]
  for mode in ("roar", "kar"):
    assert _is_pdf(tmp_path / "report" / f"{mode}.pdf")
    assert (tmp_path / "report" / f"{mode}.png").read_bytes()[:4] == (
        b"\x89PNG")


# ----------------------------------------------------------------------------
# metrics.png


def _metric_records():
  """Two estimators, deletion and ROAD MoRF, curves with per-point CIs."""
  out = {}
  for k, est in enumerate(("gradient", "random")):
    recs = {}
    for name, xs in (("deletion", [0.0, 0.5, 1.0]),
                     ("road_morf", [0.0, 0.5, 0.9])):
      curve = [0.9 - 0.2 * k, 0.5, 0.1 + 0.1 * k]
      recs[name] = {"value": 0.4 + 0.1 * k, "ci95_low": 0.35 + 0.1 * k,
                    "ci95_high": 0.47 + 0.1 * k, "n": 20,
                    "fractions": xs, "curve": curve,
                    "curve_ci95": [[c - 0.05, c + 0.04] for c in curve]}
    out[est] = {"metrics": recs}
  return out


def test_metrics_figure_has_the_csv_intervals_and_a_one_line_title():
  records = _metric_records()
  rows = metrics.rows_of(records)
  fig = metric_figures.metrics_figure(records, rows)
  assert "\n" not in fig._suptitle.get_text()  # pylint: disable=protected-access
  axes = fig.axes
  assert len(axes) == 3  # deletion, road_morf, the AUC panel.
  for ax in axes:
    assert 1.0 < ax.get_ylim()[1] <= 1.05
  # The AUC panel: one errorbar container per estimator whose bars span
  # exactly metrics.csv's ci95_low .. ci95_high.
  auc_ax = axes[-1]
  assert len(auc_ax.containers) == 2
  spans = set()
  for container in auc_ax.containers:
    (bars,) = container.lines[2]
    for seg in bars.get_segments():
      spans.add((round(float(seg[0][1]), 6), round(float(seg[1][1]), 6)))
  want = {(round(r["ci95_low"], 6), round(r["ci95_high"], 6)) for r in rows}
  assert spans == want
  # The curve panels: per-point intervals from `curve_ci95`.
  deletion = axes[0]
  (bars,) = deletion.containers[0].lines[2]
  lows = sorted(round(float(s[0][1]), 6) for s in bars.get_segments())
  curve = records["gradient"]["metrics"]["deletion"]["curve"]
  assert lows == sorted(round(c - 0.05, 6) for c in curve)


def test_metrics_report_writes_png_and_pdf(tmp_path):
  wd = workdir_lib.Workdir(tmp_path)
  metrics.write_report(wd, _metric_records())
  assert _is_pdf(tmp_path / "report" / "metrics.pdf")
  assert (tmp_path / "report" / "metrics.png").stat().st_size > 1000
  # Each PDF belongs to the stage that writes it: a report build keeps the
  # explain stage's saliency.pdf, the metrics stage swaps in metrics.pdf.
  assert report_folder.owns_metrics("metrics.pdf")
  assert not report_folder.owns_report_build("saliency.pdf")
  assert report_folder.owns_report_build("metrics.pdf")


# ----------------------------------------------------------------------------
# saliency.png


def test_saliency_grid_oracle_column_class_labels_and_views():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 6, 6, 3)).astype(np.float32)
  signed = rng.normal(size=(2, 6, 6, 3)).astype(np.float32)
  oracle = np.zeros((2, 6, 6), bool)
  oracle[:, 1:3, 1:3] = True
  fig = visualize.plot_grid(images, {"gradient": signed},
                            row_labels=["cat", "dog"], oracle=oracle,
                            title="maps")
  axes = np.array(fig.axes).reshape(2, 3)
  assert [a.get_title() for a in axes[0]] == [
      "image", visualize.ORACLE_TITLE, "gradient"]
  assert [a.get_ylabel() for a in axes[:, 0]] == ["cat", "dog"]
  shown = axes[0, 1].get_images()[0].get_array()
  np.testing.assert_array_equal(np.asarray(shown), oracle[0].astype(float))
  # Signed: red-blue, centred at 0, the sign of the channel sum kept.
  fig = visualize.plot_grid(images, {"gradient": signed}, view="signed")
  (im,) = fig.axes[1].get_images()
  assert im.get_cmap().name == visualize.SIGNED_CMAP
  assert im.get_clim() == (-1.0, 1.0)
  data = np.asarray(im.get_array())
  total = signed[0].sum(-1)
  assert np.array_equal(np.sign(data), np.sign(total))
  # Overlay: the grey image under a half-transparent heat map.
  fig = visualize.plot_grid(images, {"gradient": signed}, view="overlay")
  under, over = fig.axes[1].get_images()
  assert under.get_cmap().name == "gray"
  assert over.get_alpha() == visualize.OVERLAY_ALPHA
  np.testing.assert_allclose(np.asarray(over.get_array()),
                             visualize.map_for_display(signed[0]))
  with pytest.raises(ValueError, match="view"):
    visualize.plot_grid(images, {"gradient": signed}, view="hot")


def test_signed_display_closed_form():
  m = np.array([[2.0, -1.0], [0.0, -4.0]])
  out = visualize.signed_for_display(m, percentile=100.0)
  np.testing.assert_allclose(out, [[0.5, -0.25], [0.0, -1.0]])


def test_explain_grid_has_the_toy_oracle_and_class_names(tmp_path):
  config = ml_collections.ConfigDict({"data": {"name": "toy", "toy": {}}})
  indices = np.array([3, 0])
  masks = synthetic.toy_masks({}, "test")
  n, size = 2, masks.shape[1]
  images = np.zeros((n, size, size, 3), np.float32)
  assert saliency_figure.class_labels([1, 7], ("a", "b")) == ["b", "class 7"]
  np.testing.assert_array_equal(saliency_figure.oracle_masks(config, indices),
                                masks[indices])
  other = ml_collections.ConfigDict({"data": {"name": "cifar10"}})
  assert saliency_figure.oracle_masks(other, indices) is None
  paths = saliency_figure.write(
      config, workdir_lib.Workdir(tmp_path), images,
      {"gradient": np.ones_like(images)}, labels=[0, 1], indices=indices,
      class_names=("pattern_0", "pattern_1"))
  assert [p.rsplit("/", 1)[-1] for p in paths] == list(saliency_figure.FILES)
  assert _is_pdf(tmp_path / "report" / "saliency.pdf")


# ----------------------------------------------------------------------------
# Sanity figures and the "beats" tables.


def _sanity_record():
  rows, controls = [], []
  for est in ("gradient", "gradcam"):
    for step in range(3):
      rows.append({"estimator": est, "metric": "ssim", "step": step,
                   "mean": 1.0 - 0.5 * step, "std": 0.1, "n": 16,
                   "floor_mean": 0.0, "floor_std": 0.05})
      for k, control in enumerate(("random", "sobel")):
        controls.append({"estimator": control, "reference": est,
                         "metric": "ssim", "step": step,
                         "mean": 0.1 * k + 0.05 * step + (est == "gradcam")
                         * 0.02, "std": 0.2, "n": 16})
  meta = {"seed": 0, "num_images": 16, "trained_test_accuracy": 0.9,
          "init_description": "original", "batch_norm": "no BatchNorm",
          "target_description": "the predicted class", "seeds": {"maps": 0},
          "controls": ["random", "sobel"]}
  return {"model": "cnn", "test": "cascading", "rows": rows,
          "control_rows": controls, "status": "compared", "meta": meta,
          "steps": [{"name": n} for n in ("original", "logits", "conv")]}


def test_sanity_panel_has_one_control_band_not_control_lines(tmp_path):
  rec = _sanity_record()
  fig = sanity_figures.randomization_figure([rec], "cascading")
  (ax,) = [a for a in fig.axes if a.get_title()]
  bands = [c for c in ax.collections
           if isinstance(c, mcollections.PolyCollection)]
  assert len(bands) == 1
  assert bands[0].get_label() == sanity_figures.CONTROL_LABEL
  assert [l.get_linestyle() for l in ax.get_lines()
          if l.get_label() in ("gradient", "gradcam")] == ["-", "-"]
  assert not [l for l in ax.get_lines() if l.get_linestyle() == "--"]
  steps, low, high = sanity_figures.control_band(rec, "ssim")
  np.testing.assert_allclose(steps, [0, 1, 2])
  np.testing.assert_allclose(low, [0.0, 0.05, 0.10])
  np.testing.assert_allclose(high, [0.12, 0.17, 0.22])
  # The band's outline runs through those values.
  ys = bands[0].get_paths()[0].vertices[:, 1]
  assert min(ys) == pytest.approx(0.0) and max(ys) == pytest.approx(0.22)
  title = fig._suptitle.get_text()  # pylint: disable=protected-access
  assert "\n" not in title and "seed 0, 16 test images" in title
  path = str(tmp_path / "sanity_cascading.png")
  assert sanity_figures.plot_randomization(path, [rec], "cascading")
  assert _is_pdf(tmp_path / "sanity_cascading.pdf")


def test_beats_table_shows_the_standard_error():
  rec = _sanity_record()
  v = verdicts.verdict(rec, "gradient", "ssim")
  se = math.sqrt(0.1 ** 2 / 16 + 0.2 ** 2 / 16)
  assert v["se"] == pytest.approx(se) and v["margin"] == pytest.approx(2 * se)
  # gradient 0.0 at the last step against sobel's 0.2: 0 + 2 SE < 0.2.
  assert v["beats"]
  assert sanity_report.verdict_cell(v) == (
      f"beats: 0.000 vs sobel 0.200 (difference -0.200 ± SE {se:.3f})")


def test_sanity_report_writes_pdfs_and_standard_errors(tmp_path):
  out = sanity_report.build_report(tmp_path, [_sanity_record()], pages=False)
  names = {p.rsplit("/", 1)[-1] for p in out["files"]}
  assert {"sanity_cascading.png", "sanity_cascading.pdf"} <= names
  assert _is_pdf(tmp_path / "report" / "sanity_cascading.pdf")
  md = (tmp_path / "report" / "sanity.md").read_text()
  assert "(difference -0.200 ± SE 0.056)" in md
