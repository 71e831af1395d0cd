"""Corrections for multiple testing: Holm's step-down p and BH's q.

A report tests many cells at once (every estimator at every threshold against
a control), so some raw p-values fall below 5% by chance alone. Within one
family of tests:

- Holm (1979): sort the m raw p ascending, p_(1) <= ... <= p_(m); the
  adjusted p_(k) = max over j <= k of min(1, (m - j + 1) p_(j)). Rejecting
  where it is below alpha controls the family-wise error rate (the chance of
  any false "better"/"worse") at alpha, under any dependence between tests.
- Benjamini-Hochberg (1995): q_(k) = min over j >= k of min(1, m p_(j) / j).
  Rejecting where q < alpha controls the expected share of false discoveries
  among the rejections (the report's "discovery" column).

A NaN p (no test possible) is not a test: it is left out of m and stays NaN.
"""

import numpy as np


def _valid(p) -> tuple[np.ndarray, np.ndarray]:
  p = np.asarray(p, dtype=float).reshape(-1)
  if np.any((p < 0) | (p > 1)):
    raise ValueError(f"p-values must lie in [0, 1], got {p[(p < 0) | (p > 1)]}")
  return p, ~np.isnan(p)


def _adjusted(p, scale, running) -> np.ndarray:
  """Applies a step-wise adjustment to the sorted valid p-values.

  Args:
    p: raw p-values (NaN: untested).
    scale: (sorted p, m) -> the scaled values before the running bound.
    running: the running bound over the sorted scaled values.
  """
  p, ok = _valid(p)
  out = np.full_like(p, np.nan)
  m = int(ok.sum())
  if m:
    order = np.argsort(p[ok], kind="stable")
    values = np.empty(m)
    values[order] = np.minimum(1.0, running(scale(p[ok][order], m)))
    out[ok] = values
  return out


def holm(p) -> np.ndarray:
  """Holm-adjusted p-values, same shape as `p` (NaN where p is NaN).

  Args:
    p: raw p-values of one family of tests.
  """
  return _adjusted(p, lambda s, m: (m - np.arange(m)) * s,
                   np.maximum.accumulate)


def benjamini_hochberg(p) -> np.ndarray:
  """Benjamini-Hochberg q-values, same shape as `p` (NaN where p is NaN).

  Args:
    p: raw p-values of one family of tests.
  """
  return _adjusted(p, lambda s, m: m * s / np.arange(1, m + 1),
                   lambda v: np.minimum.accumulate(v[::-1])[::-1])
