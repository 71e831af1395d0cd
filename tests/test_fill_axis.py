"""The fill as a grid axis: units, names, statistics and the report per fill.

ROAD's argument (Rong et al. 2022) is that the fill of the removed pixels can
change a verdict; the report must then show each fill's verdict, never pool
them. Records here are written by hand so that the expected verdicts are
known.
"""

import pytest

from conftest import load_config
from roar_jax import workdir as workdir_lib
from roar_jax.benchmark.roar import agreement, grid, report, results, tables
from roar_jax.config import validation

FILLS = ("channel_mean", "noisy_linear")


def _record(est, thr, seed, acc, fill):
  return {"estimator": est, "mode": "roar", "threshold": thr, "seed": seed,
          "fill": fill, "test_accuracy": acc, "steps": 10,
          "wall_time_s": 1.0, "config_hash": "abc"}


# Under the channel mean, `gradient` is clearly below random at 90% (ROAR:
# better); under the imputation it is as good as random: the fill changes
# the verdict. Three paired seeds each.
ACCURACIES = {
    ("gradient", "channel_mean"): [0.30, 0.33, 0.31],
    ("random", "channel_mean"): [0.60, 0.62, 0.61],
    ("gradient", "noisy_linear"): [0.58, 0.63, 0.60],
    ("random", "noisy_linear"): [0.60, 0.61, 0.62],
}


def _records():
  return [_record(e, 0.9, s, a, f) for (e, f), accs in ACCURACIES.items()
          for s, a in enumerate(accs)]


def test_statistics_pair_seeds_within_a_fill():
  rows = {(r["estimator"], r["fill"]): r for r in results.aggregate(
      _records())}
  assert set(rows) == set(ACCURACIES)
  cm = rows[("gradient", "channel_mean")]
  nl = rows[("gradient", "noisy_linear")]
  assert cm["mean_accuracy"] == pytest.approx(0.94 / 3)
  assert nl["mean_accuracy"] == pytest.approx(1.81 / 3)
  # Differences to random under the channel mean: -0.30, -0.29, -0.30.
  assert cm["p_vs_random"] < 1e-3
  # Under the imputation: -0.02, +0.02, -0.02: nothing to tell apart.
  assert nl["p_vs_random"] > 0.5


def test_report_sets_the_fills_side_by_side(tmp_path):
  out = report.build_report(workdir_lib.Workdir(tmp_path), _records(), {
      ("gradient", "roar", 0.9, "noisy_linear"): 0.55,
      ("gradient", "roar", 0.9, "channel_mean"): 0.20}, num_classes=10)
  assert {r["fill"] for r in out["rows"]} == set(FILLS)
  csv_rows = report.read_csv(str(tmp_path / "report" / "results.csv"))
  no_retrain = {(r["estimator"], r["fill"]): r["no_retrain_accuracy"]
                for r in csv_rows}
  assert no_retrain[("gradient", "channel_mean")] == pytest.approx(0.20)
  assert no_retrain[("gradient", "noisy_linear")] == pytest.approx(0.55)
  summary = (tmp_path / "report" / "summary.md").read_text()
  assert "### ROAR, fill channel_mean" in summary
  assert "### ROAR, fill noisy_linear" in summary
  assert "## Fills side by side" in summary
  (row,) = [line for line in summary.splitlines()
            if line.startswith("| 0.90 | gradient |")
            and "noisy_linear vs random" not in line and "yes" in line]
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert cells[2] == "31.33" and cells[3].startswith("better than random")
  assert cells[4] == "60.33" and cells[5].startswith("not distinguishable")
  assert cells[6] == "yes"
  assert "One panel per fill" in summary


def test_fills_table_marks_only_changed_verdicts():
  frame = results.aggregate_frame(_records())
  table = tables.fills_table(frame, "roar")
  marks = dict(zip(table["estimator"], table["verdict differs"]))
  assert marks == {"random": "", "gradient": "yes"}


def test_mode_figure_has_a_panel_per_fill():
  from roar_jax.benchmark.roar import figures  # pylint: disable=g-import-not-at-top
  frame = results.aggregate_frame(_records())
  fig = figures.mode_figure(frame, "roar",
                            style_of=figures.styles(["gradient", "random"]))
  titles = [ax.get_title() for ax in fig.axes]
  assert titles == ["fill: channel_mean", "fill: noisy_linear"]
  # Each panel draws its own fill's curve: gradient's retrained point.
  ys = [sorted(round(float(y), 4) for line in ax.get_lines()
               for y in line.get_ydata() if line.get_color() != "black")
        for ax in fig.axes]
  assert 0.3133 in ys[0] and 0.3133 not in ys[1]
  assert 0.6033 in ys[1]


def test_agreement_names_each_fills_roar():
  rows = results.rows_of(results.aggregate_frame(_records()))
  scores = agreement.scores([], rows)
  assert set(scores) == {"roar", "roar_noisy_linear"}
  assert scores["roar"]["gradient"] == pytest.approx(-0.94 / 3)


def test_units_carry_the_fill_in_their_names():
  config = load_config("toy")
  with config.unlocked():
    config.roar.fill = FILLS
  units = grid.all_units(config)
  assert len(units) == 2 * 3 * 2 * 2 * 5
  names = {u.name for u in units}
  assert "gradient__roar__t050__seed0" in names
  assert "gradient__roar__t050__noisy_linear__seed0" in names
  assert grid.parse_unit("gradient/kar/0.9/2/noisy_linear", FILLS) == (
      grid.Unit("gradient", "kar", 0.9, 2, "noisy_linear"))


@pytest.mark.parametrize("fill,unit,message", [
    (("channel_mean", "zeros"), "", "unknown fill 'zeros'"),
    ((), "", r"config.roar.fill=\(\)"),
    (("noisy_linear", "noisy_linear"), "", "named more than once"),
    (FILLS, "gradient/roar/0.5/0", "name one, e.g. 'gradient/roar/0.5/0/"
     "channel_mean'"),
    ("channel_mean", "gradient/roar/0.5/0/noisy_linear",
     "fill 'noisy_linear' is not one of the grid's"),
])
def test_bad_fills_are_named(fill, unit, message):
  config = load_config("toy")
  with config.unlocked():
    config.roar.fill = fill
    config.roar.unit = unit
  with pytest.raises(validation.ConfigError, match=message):
    validation.validate(config, "roar")
