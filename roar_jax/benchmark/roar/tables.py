"""The tables of the ROAR/KAR report, as the summary and the page show them.

Every table is a DataFrame of strings built from `results.aggregate_frame`
(or `statistics.rank_stability`); `html_page` renders one for summary.md
and for index.html. A grid run under several fills
(`config.roar.fill`) gets one results table per (mode, fill) and, per mode,
`fills_table`: every estimator's accuracy and verdict against random under
each fill, side by side, with the rows whose verdict the fill changes marked.
The tables of the other stages' CSV files (metrics.csv, leakage.csv,
agreement.csv) are built from their rows as read back, so what a page shows
is what the file holds.
"""

import math

import pandas as pd

from roar_jax.benchmark.roar import comparisons
from roar_jax.benchmark.roar import metric_plugins
from roar_jax.benchmark.roar import statistics

# Spearman's rho over fewer estimators takes too few values to read: over 3
# it is one of 1, 0.5, -0.5, -1.
MIN_AGREEMENT_ESTIMATORS = 4


def pct(v: float | None) -> str:
  """An accuracy fraction in %, 2 decimals; '–' for none."""
  return "–" if v is None or math.isnan(v) else f"{100 * v:.2f}"


def _accuracy_cell(row) -> str:
  if row["num_seeds"] == 0:
    return "–"
  if row["num_seeds"] == 1:
    return f"{pct(row['mean_accuracy'])} (single seed: no interval)"
  return (f"{pct(row['mean_accuracy'])} [{pct(row['ci95_low'])}, "
          f"{pct(row['ci95_high'])}]")


def mode_order(mode: str):
  """Sort key: ROAR, then KAR, then any other mode alphabetically."""
  return (mode != "roar", mode != "kar", mode)


def fills(frame: pd.DataFrame) -> list[str]:
  """The fills in the results, sorted."""
  return sorted(set(frame["fill"]))


def panels(frame: pd.DataFrame) -> list[tuple[str, str]]:
  """The (mode, fill) pairs in the results: ROAR first, then KAR."""
  return sorted(set(zip(frame["mode"], frame["fill"])),
                key=lambda p: (mode_order(p[0]), p[1]))


def panel_title(mode: str, fill: str, several_fills: bool) -> str:
  return mode.upper() + (f", fill {fill}" if several_fills else "")


def _ordered(frame: pd.DataFrame, mode: str) -> pd.DataFrame:
  """The rows of `mode` by fraction, then estimator with random first, so
  that the estimators compared at one fraction sit under their control."""
  sub = frame[frame["mode"] == mode].assign(
      _not_control=lambda f: f["estimator"] != comparisons.RANDOM)
  return sub.sort_values(["threshold", "_not_control", "estimator", "fill"],
                         kind="stable")


def _points(v: float) -> str:
  """A difference of accuracy fractions in points, signed, 2 decimals."""
  return "–" if v is None or math.isnan(v) else f"{100 * v:+.2f}"


def _difference_cell(row) -> str:
  """Mean difference to random with its per-image bootstrap interval."""
  if math.isnan(row["mean_diff_vs_random"]):
    return "–"
  text = _points(row["mean_diff_vs_random"])
  if not math.isnan(row["diff_ci95_low_vs_random"]):
    text += (f" [{_points(row['diff_ci95_low_vs_random'])}, "
             f"{_points(row['diff_ci95_high_vs_random'])}]")
  return text


def _smooth_verdicts(compared: pd.DataFrame, frame: pd.DataFrame,
                     mode: str) -> dict[tuple, str]:
  """(estimator, threshold, fill) -> the verdict against the estimator's
  smoothness-matched control, with the control named."""
  out = {}
  seeds = frame.set_index(["estimator", "threshold", "fill"])["num_seeds"]
  sub = compared[(compared["mode"] == mode)
                 & (compared["control"] != comparisons.RANDOM)]
  for r in sub.itertuples(index=False):
    key = (r.estimator, r.threshold, r.fill)
    out[key] = comparisons.verdict(
        mode=mode, control=r.control, num_seeds=int(seeds.get(key, 0)),
        paired_seeds=r.paired_seeds, p=r.p, p_holm=r.p_holm,
        mean_diff=r.mean_diff, mdd80=r.mdd80)
  return out


def only_vs_iid(vs_random: str, vs_smooth: str | None) -> bool:
  """A win against iid random that the smoothness-matched control does not
  confirm: the map may only be smoother than random (blur bias)."""
  return (vs_random.startswith("better") and vs_smooth is not None
          and not vs_smooth.startswith("better"))


def leaks(row) -> bool:
  """Whether a leakage-probe row's mask alone predicts the class above
  chance beyond its 95% interval (no interval, e.g. one probe seed: no)."""
  low = float(row.get("ci95_low", math.nan))
  return not math.isnan(low) and low > float(row["chance"])


def _leakage_cell(row) -> str:
  if row is None:
    return "–"
  text = pct(float(row["mask_only_accuracy"]))
  low, high = (float(row.get(k, math.nan)) for k in ("ci95_low", "ci95_high"))
  if not math.isnan(low):
    text += f" [{pct(low)}, {pct(high)}]"
  return text + (" leaks" if leaks(row) else "")


def leakage_by_key(rows) -> dict[tuple[str, str, float], dict]:
  """leakage.csv rows by (estimator, mode, threshold)."""
  return {(r["estimator"], r["mode"], round(float(r["threshold"]), 4)): r
          for r in rows or ()}


def results_table(frame: pd.DataFrame, mode: str, fill: str | None = None,
                  compared: pd.DataFrame | None = None,
                  leakage=None) -> pd.DataFrame:
  """The rows of `mode` (and `fill`, when given), accuracies in %.

  Args:
    frame: `results.aggregate_frame`.
    mode: 'roar' or 'kar'.
    fill: one fill, or None for all rows.
    compared: `comparisons.compare` of the same records; adds the verdict
      against each estimator's smoothness-matched control when the grid has
      one.
    leakage: `leakage_by_key` of the probes; adds the mask-only accuracy
      (marked 'leaks' when above chance beyond its interval).
  """
  sub = _ordered(frame, mode)
  if fill is not None:
    sub = sub[sub["fill"] == fill]
  vs_random = sub.apply(lambda r: comparisons.row_verdict(r, mode), axis=1)
  table = pd.DataFrame({
      "fraction": sub["threshold"].map(lambda t: f"{t:.2f}"),
      "estimator": sub["estimator"],
      "seeds": sub["num_seeds"],
      "accuracy % [95% CI]": sub.apply(_accuracy_cell, axis=1),
      "no retrain %": sub["no_retrain_accuracy"].map(pct),
      "vs random, points [95% CI per image]": sub.apply(_difference_cell,
                                                        axis=1),
      "p": sub["p_vs_random"].map(statistics.format_p),
      "Holm p": sub["p_holm_vs_random"].map(statistics.format_p),
      "BH q": sub["q_bh_vs_random"].map(statistics.format_p),
      "vs random (Holm, 5%)": vs_random,
  })
  if leakage:
    table["mask alone % [95% CI]"] = [
        _leakage_cell(leakage.get((e, mode, round(float(t), 4))))
        for e, t in zip(sub["estimator"], sub["threshold"])]
  smooth = ({} if compared is None
            else _smooth_verdicts(compared, frame, mode))
  if smooth:
    keys = list(zip(sub["estimator"], sub["threshold"], sub["fill"]))
    table["vs smoothness-matched control"] = [smooth.get(k, "–")
                                              for k in keys]
    table["only vs iid random"] = [
        "yes" if only_vs_iid(v, smooth.get(k)) else ""
        for v, k in zip(vs_random, keys)]
  return table


def _tested(verdict: str) -> str | None:
  """'better than random', 'worse than random' or 'not distinguishable'
  without the p-value; None for a row without a test (one seed, ...)."""
  word = verdict.split(" (")[0]
  return word if word.startswith(("better", "worse", "not dist")) else None


def fills_table(frame: pd.DataFrame, mode: str) -> pd.DataFrame:
  """Per (fraction, estimator) of `mode`: accuracy, p and verdict under
  every fill, side by side; `verdict differs` marks the rows whose tested
  verdict against random the fill changes."""
  sub = _ordered(frame, mode)
  names = fills(frame)
  out = {}
  for (thr, est), group in sub.groupby(["threshold", "estimator"],
                                       sort=False):
    row = {"fraction": f"{thr:.2f}", "estimator": est}
    words = set()
    for fill in names:
      r = group[group["fill"] == fill]
      if r.empty:
        row[f"{fill} %"] = row[f"{fill} vs random"] = "–"
        continue
      r = r.iloc[0]
      verdict = comparisons.row_verdict(r, mode)
      words.add(_tested(verdict))
      row[f"{fill} %"] = pct(r["mean_accuracy"])
      row[f"{fill} vs random"] = verdict
    # Only tested verdicts count: 'no test' beside 'better' is no change.
    row["verdict differs"] = ("yes" if None not in words and len(words) > 1
                              else "")
    out[(thr, est)] = row
  return pd.DataFrame(list(out.values()))


def _first_places(scores: pd.DataFrame, mode: str) -> tuple[list[str],
                                                             int, int]:
  """(the estimators tied for the best mean over seeds, the seeds in which
  the first of them is first alone, those in which it shares first place)."""
  ascending = mode == "roar"
  means = scores.mean(axis=0)
  top = means.min() if ascending else means.max()
  tied = sorted(e for e, v in means.items() if math.isclose(v, top))
  ranks = scores.rank(axis=1, ascending=ascending, method="min")
  first = ranks.eq(1)
  best = first[tied[0]]
  alone = int((best & (first.sum(axis=1) == 1)).sum())
  return tied, alone, int(best.sum()) - alone


def _stability_words(stability: pd.DataFrame, by_seed) -> tuple[list, list]:
  """The 'best' and 'first in seeds' cells: a tie is named as one."""
  best, first = [], []
  for r in stability.itertuples(index=False):
    scores = (None if by_seed is None or not r.seeds else
              statistics.seed_scores(by_seed, r.mode, r.fill))
    if scores is None or scores.empty:
      best.append(r.best)
      first.append(f"{r.best_in_seeds} of {r.seeds}")
      continue
    tied, alone, shared = _first_places(scores, r.mode)
    best.append(r.best if len(tied) == 1 else "tied: " + ", ".join(tied))
    first.append(f"{alone} of {r.seeds}" + (
        f" (tied for first in {shared} more)" if shared else ""))
  return best, first


def stability_table(stability: pd.DataFrame, several_fills: bool = False,
                    by_seed: pd.DataFrame | None = None) -> pd.DataFrame:
  """rank_stability.csv as shown: Kendall's W, Spearman, the best.

  Args:
    stability: `statistics.rank_stability`.
    several_fills: show the fill column.
    by_seed: the records (`results.records_frame`); with them a tie for
      first place reads as one ('tied: a, b'; 'k of m (tied for first in j
      more)') rather than as a best estimator first in 0 seeds.
  """
  def num(v):
    return "–" if math.isnan(v) else f"{v:.3f}"
  columns = {"mode": stability["mode"]}
  if several_fills:
    columns["fill"] = stability["fill"]
  best, first = _stability_words(stability, by_seed)
  return pd.DataFrame({
      **columns,
      "seeds": stability["seeds"],
      "estimators": stability["estimators"],
      "Kendall's W": stability["kendall_w"].map(num),
      "mean pairwise Spearman": stability["mean_spearman"].map(num),
      "best (mean over seeds)": best,
      "first in seeds": first,
  })


def _num(v: str, digits: int = 4) -> str:
  """A CSV number with `digits` decimals; '–' for nan or empty."""
  x = float(v) if v not in (None, "") else math.nan
  return "–" if math.isnan(x) else f"{x:.{digits}f}"


def metrics_table(rows) -> pd.DataFrame:
  """metrics.csv as shown: an estimator a row, a metric's area under the
  curve with its 95% interval over the images a column."""
  known = list(metric_plugins.columns())
  names = sorted(dict.fromkeys(r["metric"] for r in rows),
                 key=lambda n: (n not in known, known.index(n)
                                if n in known else 0, n))
  out = {}
  for r in rows:
    row = out.setdefault(r["estimator"], {"estimator": r["estimator"],
                                          "images": r["n"]})
    row[r["metric"]] = (f"{_num(r['value'])} [{_num(r['ci95_low'])}, "
                        f"{_num(r['ci95_high'])}]")
  table = pd.DataFrame(list(out.values()),
                       columns=["estimator", "images", *names]).fillna("–")
  return table.rename(columns={n: metric_heading(n) for n in names})


def metric_heading(name: str) -> str:
  """'deletion_auc' -> 'deletion AUC [95% CI] (lower is better)';
  'infidelity' -> 'infidelity [95% CI] (lower is better)'."""
  lower = metric_plugins.direction(name)
  if lower is None:
    return name
  better = "lower" if lower else "higher"
  label = (f"{name.removesuffix('_auc')} AUC" if name.endswith("_auc")
           else name)
  return f"{label} [95% CI] ({better} is better)"


def leakage_table(rows) -> pd.DataFrame:
  """leakage.csv as shown: each probe's mask-only accuracy in %, with its
  95% interval over probe seeds, chance and the per-seed accuracies."""
  return pd.DataFrame({
      "mode": [r["mode"].upper() for r in rows],
      "fraction": [f"{float(r['threshold']):.2f}" for r in rows],
      "estimator": [r["estimator"] for r in rows],
      "mask alone % [95% CI]": [_leakage_cell(r).removesuffix(" leaks")
                                for r in rows],
      "chance %": [pct(float(r["chance"])) for r in rows],
      "probe seeds": [r["num_probe_seeds"] for r in rows],
      "by seed %": [", ".join(pct(float(a)) for a in
                              str(r["accuracy_by_seed"]).split())
                    for r in rows],
      "leaks": ["yes" if leaks(r) else "" for r in rows],
  }, columns=["mode", "fraction", "estimator", "mask alone % [95% CI]",
              "chance %", "probe seeds", "by seed %", "leaks"])


def agreement_table(rows) -> pd.DataFrame:
  """agreement.csv as shown; pairs over fewer than
  MIN_AGREEMENT_ESTIMATORS estimators are marked."""
  return pd.DataFrame({
      "metric a": [r["metric_a"] for r in rows],
      "metric b": [r["metric_b"] for r in rows],
      "Spearman": [_num(r["spearman"]) for r in rows],
      "estimators": [r["n"] for r in rows],
      "which": [str(r["estimators"]).replace(";", ", ") for r in rows],
      "few estimators": ["yes" if int(r["n"]) < MIN_AGREEMENT_ESTIMATORS
                         else "" for r in rows],
  }, columns=["metric a", "metric b", "Spearman", "estimators", "which",
              "few estimators"])
