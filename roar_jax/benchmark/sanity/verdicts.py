"""Which estimators beat the controls (Binder et al. 2023).

The controls (`random`, `sobel`) ignore the model: their maps' similarity to
an estimator's trained maps is what a metric gives a map that knows nothing
of the model. An estimator *beats the controls* on a metric when, at the
fully randomized step (the last cascading step; the random-label model of
the data test), its maps are less similar to its trained maps than the best
control's (the control most similar to those trained maps), by more than
two standard errors of the difference:

  mean_E + 2 sqrt(std_E^2 / n_E + std_C^2 / n_C) < mean_C.

An estimator that does not beat them has not shown, by this metric, that its
maps depend on the model more than a model-free map's resemblance does.
"""

import math
from typing import Any, Mapping, Sequence

VERDICT_TESTS = ("cascading", "data")
DEFINITION = (
    "An estimator beats the controls on a metric when, at the fully "
    "randomized step (the last cascading step; the random-label model of the "
    "data test), its maps' similarity to its trained maps is lower than that "
    "of the best control (the random or sobel map, whichever is more similar "
    "to the estimator's trained maps; both ignore the model) by more than two "
    "standard errors of the difference: mean_E + 2 sqrt(std_E^2/n_E + "
    "std_C^2/n_C) < mean_C.")


def best_control_curve(rec: Mapping[str, Any], estimator: str, metric: str
                       ) -> list[tuple[int, float]]:
  """(step, the highest control mean) against `estimator`'s trained maps."""
  best: dict[int, float] = {}
  for r in rec.get("control_rows", ()):
    if r["reference"] == estimator and r["metric"] == metric:
      m = r["mean"]
      if not math.isnan(m) and (r["step"] not in best or m > best[r["step"]]):
        best[r["step"]] = m
  return sorted(best.items())


def verdict(rec: Mapping[str, Any], estimator: str, metric: str
            ) -> dict[str, Any] | None:
  """The estimator against the best control at the last step of `rec`."""
  rows = [r for r in rec["rows"]
          if r["estimator"] == estimator and r["metric"] == metric]
  if not rows:
    return None
  last = max(r["step"] for r in rows)
  (e,) = [r for r in rows if r["step"] == last]
  controls = [r for r in rec.get("control_rows", ())
              if r["reference"] == estimator and r["metric"] == metric
              and r["step"] == last and not math.isnan(r["mean"])]
  if not controls:
    return None
  c = max(controls, key=lambda r: r["mean"])
  defined = e["n"] > 0 and c["n"] > 0 and not math.isnan(e["mean"])
  # The standard error of the difference of the two means.
  se = (math.sqrt(e["std"] ** 2 / e["n"] + c["std"] ** 2 / c["n"])
        if defined else float("nan"))
  margin = 2 * se
  return {"estimator": estimator, "metric": metric, "step": last,
          "mean": e["mean"], "control": c["estimator"],
          "control_mean": c["mean"], "se": se, "margin": margin,
          "beats": bool(defined and e["mean"] + margin < c["mean"])}


def verdicts(rec: Mapping[str, Any], metrics: Sequence[str]
             ) -> dict[str, dict[str, dict[str, Any]]]:
  """{estimator: {metric: verdict}} of one (model, test) record."""
  out = {}
  for est in dict.fromkeys(r["estimator"] for r in rec["rows"]):
    per = {m: v for m in metrics if (v := verdict(rec, est, m)) is not None}
    if per:
      out[est] = per
  return out
