"""The smallest difference a paired design could have detected.

"Not distinguishable from random" is only informative beside the size of a
difference the design would have found. For a paired t-test over n seeds with
observed standard deviation s of the paired differences, the minimum
detectable difference (MDD) at power 1 - beta and two-sided level alpha is
the delta at which the test rejects with probability 1 - beta:

  P(|T| > t(1 - alpha/2, n - 1)),  T ~ noncentral t(n - 1, delta sqrt(n) / s),

solved for delta. For large n it approaches (z(1 - alpha/2) + z(1 - beta))
s / sqrt(n) = 2.80 s / sqrt(n) at the defaults. For an estimate with a
(bootstrap) standard error se, the normal form (z(1 - alpha/2) + z(1 - beta))
se is used.
"""

import math

import numpy as np
from scipy import optimize
from scipy import stats

ALPHA = 0.05
POWER = 0.8


def paired_t_power(delta: float, sd: float, n: int,
                   alpha: float = ALPHA) -> float:
  """The power of a two-sided paired t-test: n pairs, true mean difference
  `delta`, standard deviation `sd` of the differences."""
  df = n - 1
  crit = stats.t.ppf(1 - alpha / 2, df)
  ncp = delta * math.sqrt(n) / sd
  # The far tail against the difference's sign is below 1e-15 where scipy's
  # noncentral t returns NaN for it.
  wrong_side = float(np.nan_to_num(stats.nct.cdf(-crit, df, ncp)))
  return float(stats.nct.sf(crit, df, ncp)) + wrong_side


def paired_t_mdd(sd: float, n: int, alpha: float = ALPHA,
                 power: float = POWER) -> float:
  """The minimum detectable difference of a paired t-test (NaN when n < 2 or
  the spread is not known).

  Args:
    sd: standard deviation (ddof 1) of the paired differences.
    n: number of pairs.
    alpha: two-sided level.
    power: the power to reach.
  """
  if n < 2 or not np.isfinite(sd):
    return math.nan
  if sd == 0:
    return 0.0
  # Solved for the standardized difference delta / sd, whose root lies in a
  # range where the noncentral t is well computed; the power rises
  # monotonically in it, and the normal approximation doubled until the power
  # passes brackets the root even for n = 2.
  z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
  high = z / math.sqrt(n)
  while paired_t_power(high, 1.0, n, alpha) < power:
    high *= 2
  effect = optimize.brentq(
      lambda d: paired_t_power(d, 1.0, n, alpha) - power, 0.0, high,
      xtol=1e-12, rtol=1e-10)
  return float(effect * sd)


def normal_mdd(se: float, alpha: float = ALPHA, power: float = POWER) -> float:
  """(z(1 - alpha/2) + z(power)) se: the MDD of an estimate with standard
  error `se` (NaN stays NaN)."""
  return float((stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * se)
