"""A two-level bootstrap of the accuracy difference between two units.

Every retrain stores which test images its model gets right
(`training/per_image.py`). Two estimators' retrains at the same mode,
threshold and fill pair twice: by seed (seed k of every unit shares its
initialization and data order) and by test image (both are evaluated on the
same images, degraded each by its own ranking). With d[s, i] = correct_A[s, i]
- correct_B[s, i] over S paired seeds and N images, the difference of mean
accuracies is the mean of d.

Seeds and images are crossed, not nested: d = m + a_s + b_i + e_si, and the
variance of the mean is var(a)/S + var(b)/N + var(e)/(S N). Resampling seeds
and images at once (the "pigeonhole" bootstrap) counts the residual e about
three times, and with 0/1 outcomes the residual dominates: its intervals
covered a known difference in 200 of 200 simulations instead of 190. So each
resample adds two independent parts to the mean of d:

- images: the mean over N images drawn with replacement of the centred image
  means (mean over seeds of d[:, i]), whose variance is var(b)/N + var(e)/(S N);
- seeds: the mean over S seeds drawn with replacement of the centred seed
  means, shrunk by c = sqrt(max(0, 1 - MS_res / MS_seeds)) so that their
  spread estimates var(a) alone, without the residual the image part already
  holds (the shrunken two-stage bootstrap of Davison and Hinkley 1997, sec.
  3.8, with the seeds as the random effect).

Both parts are scaled by sqrt(n / (n - 1)) against the bootstrap's shrinkage
of a variance over n draws. The percentile interval of 2,000 resamples
(DESIGN.md) is the 95% CI; their standard deviation is the standard error.
With few seeds and a large seed effect the seed part is coarse (3 seeds give
10 distinct resamples): the paired t-test over seeds is then the stricter
test, and the report gives both.

The generator is seeded from the cell's name, so the same files give the same
interval in every run.
"""

import hashlib

import numpy as np

RESAMPLES = 2000
CONFIDENCE = 0.95
# Resamples drawn at once: bounds the [chunk, N] count matrix in memory.
_CHUNK = 250


def rng_for(*key) -> np.random.Generator:
  """A generator seeded by a stable hash of `key` (e.g. the cell's name)."""
  digest = hashlib.sha256(repr(key).encode()).digest()
  return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _resampled_means(values: np.ndarray, rng: np.random.Generator,
                     resamples: int) -> np.ndarray:
  """[resamples] means of len(values) draws with replacement from values."""
  n = len(values)
  out = []
  for start in range(0, resamples, _CHUNK):
    size = min(_CHUNK, resamples - start)
    out.append(values[rng.integers(0, n, size=(size, n))].mean(axis=1))
  return np.concatenate(out)


def resample_means(d: np.ndarray, rng: np.random.Generator,
                   resamples: int = RESAMPLES) -> np.ndarray:
  """The bootstrap distribution of the mean of d (see the module doc).

  Args:
    d: [S, N] paired differences (seed by image).
    rng: the generator.
    resamples: how many resamples.

  Returns:
    [resamples] float64.
  """
  d = np.asarray(d, dtype=np.float64)
  s, n = d.shape
  grand = d.mean()
  seed_means, image_means = d.mean(axis=1), d.mean(axis=0)
  image_part = (image_means - grand) * np.sqrt(n / max(n - 1, 1))
  out = grand + _resampled_means(image_part, rng, resamples)
  if s >= 2:
    ms_seeds = n * ((seed_means - grand) ** 2).sum() / (s - 1)
    resid = d - seed_means[:, None] - image_means[None, :] + grand
    ms_res = (resid ** 2).sum() / max((s - 1) * (n - 1), 1)
    shrink = np.sqrt(max(0.0, 1.0 - ms_res / ms_seeds)) if ms_seeds > 0 else 0
    seed_part = shrink * (seed_means - grand) * np.sqrt(s / (s - 1))
    out = out + _resampled_means(seed_part, rng, resamples)
  return out


def difference_interval(a: np.ndarray, b: np.ndarray, *key,
                        resamples: int = RESAMPLES,
                        confidence: float = CONFIDENCE) -> dict[str, float]:
  """The mean accuracy difference a - b with its bootstrap CI and SE.

  Args:
    a: [S, N] 0/1 correctness of unit A per paired seed (rows) and image.
    b: [S, N] the same for B, rows in the same seed order.
    *key: names the cell; seeds the generator.
    resamples: bootstrap resamples.
    confidence: the interval's coverage.

  Returns:
    {'diff': mean of a - b, 'low', 'high': percentile interval,
     'se': standard deviation of the resampled means}.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 2 or 0 in a.shape:
    raise ValueError(f"per-image records do not pair: shapes {a.shape} and "
                     f"{b.shape}")
  d = a - b
  means = resample_means(d, rng_for(*key), resamples)
  tail = 100 * (1 - confidence) / 2
  low, high = np.percentile(means, [tail, 100 - tail])
  return {"diff": float(d.mean()), "low": float(low), "high": float(high),
          "se": float(means.std(ddof=1))}
