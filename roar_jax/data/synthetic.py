"""Synthetic datasets whose informative features are known.

Two generators, both pure numpy and seeded (no files):

- The toy image dataset (`make_toy`, `toy_source`, `toy_masks`): noise images
  with a class-specific pattern pasted at one of a few positions. Only the
  pattern carries the class; the generator returns the mask of its pixels, so
  later stages can check that a saliency method finds them and that removing
  them (the oracle ranking) hurts retraining more than removing random pixels.
- The artificial linear dataset of the ROAR paper (Hooker et al. 2019, sec. 3):
  16 features of which the first 4 are informative (`make_synthetic_linear`).
"""

import functools
from typing import Any, Mapping

import numpy as np

from roar_jax.data import source_protocol as source_lib

TOY_DEFAULTS = {
    "num_train": 4000,
    "num_test": 1000,
    "num_classes": 4,
    "image_size": 32,
    "seed": 0,
    "patch_size": 6,
    "num_locations": 4,
    "background_std": 48.0,
    "pattern_amplitude": 80.0,
    "pattern_noise": 16.0,
}

# Split name -> stream of the per-image random choices. The class patterns come
# from stream 0, shared by both splits, so train and test show the same classes.
_SPLIT_STREAMS = {"train": 1, "test": 2}

NUM_LINEAR_FEATURES = 16
NUM_INFORMATIVE = 4


def toy_locations(image_size: int, patch_size: int,
                  num_locations: int) -> np.ndarray:
  """Top-left corners of the positions a toy pattern can occupy.

  The image is cut into a g x g grid of cells (g = ceil(sqrt(num_locations)));
  location l is centered in cell (l // g, l % g), so patterns never overlap.

  Args:
    image_size: side S of the square images.
    patch_size: side P of the square pattern.
    num_locations: number of positions L.

  Returns:
    int array [L, 2] of (row, column) corners.
  """
  if num_locations < 1:
    raise ValueError(f"num_locations={num_locations} must be >= 1")
  grid = int(np.ceil(np.sqrt(num_locations)))
  cell = image_size // grid
  if patch_size < 1 or patch_size > cell:
    raise ValueError(
        f"patch_size={patch_size} must be in [1, {cell}]: {num_locations} "
        f"locations on a {image_size}x{image_size} image leave {cell}x{cell} "
        "pixels per location")
  offset = (cell - patch_size) // 2
  return np.array([(cell * (l // grid) + offset, cell * (l % grid) + offset)
                   for l in range(num_locations)], dtype=np.int64)


def toy_patterns(num_classes: int, patch_size: int, *, pattern_seed: int,
                 channels: int = 3) -> np.ndarray:
  """The class patterns: random signs, float32 [K, P, P, C] in {-1, +1}.

  Each class gets an independent random sign pattern; two such patterns agree
  on about half their values, so the classes are far apart.
  """
  rng = np.random.default_rng([pattern_seed, 0])
  signs = rng.integers(0, 2, size=(num_classes, patch_size, patch_size,
                                   channels))
  return (2.0 * signs - 1.0).astype(np.float32)


def make_toy(num_examples: int, *, seed: int, num_classes: int = 4,
             image_size: int = 32, patch_size: int = 6, num_locations: int = 4,
             pattern_seed: int = 0, background_std: float = 48.0,
             pattern_amplitude: float = 80.0, pattern_noise: float = 16.0,
             channels: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Toy images whose class evidence sits at known pixels.

  Every image is i.i.d. Gaussian noise N(128, background_std^2) per value. One
  P x P patch at one of `num_locations` positions (chosen uniformly per image,
  independently of the label) is replaced by 128 + pattern_amplitude * pattern
  of the image's class + N(0, pattern_noise^2). The background and the position
  are independent of the label: the pattern is the only evidence of the class.

  Args:
    num_examples: number of images N.
    seed: seed of the per-image choices (label order, position, noise).
    num_classes: number of classes K (labels are balanced: each class appears
      N // K or N // K + 1 times).
    image_size: side S of the square images.
    patch_size: side P of the pattern.
    num_locations: number of positions a pattern can occupy.
    pattern_seed: seed of the class patterns; datasets that should show the
      same classes (train and test) must share it.
    background_std: standard deviation of the background noise (pixel units).
    pattern_amplitude: contrast of the pattern around mid-gray.
    pattern_noise: standard deviation of the noise on the pattern pixels.
    channels: number of image channels.

  Returns:
    (images uint8 [N, S, S, C], labels int64 [N], masks bool [N, S, S]), where
    masks[i] is True exactly on the pattern pixels of image i.
  """
  if num_examples < 0:
    raise ValueError(f"num_examples={num_examples} must be >= 0")
  if num_classes < 2:
    raise ValueError(f"num_classes={num_classes} must be >= 2")
  corners = toy_locations(image_size, patch_size, num_locations)
  patterns = toy_patterns(num_classes, patch_size, pattern_seed=pattern_seed,
                          channels=channels)
  rng = np.random.default_rng([seed, 1])
  labels = rng.permutation(np.arange(num_examples) % num_classes)
  where = rng.integers(0, num_locations, size=num_examples)
  images = rng.normal(128.0, background_std,
                      size=(num_examples, image_size, image_size, channels))
  patch_values = (128.0 + pattern_amplitude * patterns[labels] +
                  rng.normal(0.0, pattern_noise,
                             size=(num_examples, patch_size, patch_size,
                                   channels)))
  masks = np.zeros((num_examples, image_size, image_size), dtype=bool)
  for l, (r, c) in enumerate(corners):
    sel = where == l
    images[sel, r:r + patch_size, c:c + patch_size] = patch_values[sel]
    masks[sel, r:r + patch_size, c:c + patch_size] = True
  images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
  return images, labels.astype(np.int64), masks


def toy_params(toy_config: Mapping[str, Any] | None) -> dict[str, Any]:
  """`config.data.toy` completed with the defaults of `TOY_DEFAULTS`."""
  params = dict(TOY_DEFAULTS)
  for key, value in dict(toy_config or {}).items():
    if key not in TOY_DEFAULTS:
      raise ValueError(f"config.data.toy.{key} is not a toy dataset option; "
                       f"known: {sorted(TOY_DEFAULTS)}")
    params[key] = value
  return params


def make_toy_split(toy_config: Mapping[str, Any] | None, split: str
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(images, labels, masks) of one split of the configured toy dataset.

  Both splits share the class patterns (`pattern_seed = toy.seed`); their
  per-image choices come from different seeds, so no image repeats.
  """
  p = toy_params(toy_config)
  if split not in _SPLIT_STREAMS:
    raise ValueError(f"unknown split {split!r}; the toy dataset has "
                     f"{sorted(_SPLIT_STREAMS)}")
  return make_toy(
      int(p[f"num_{split}"]),
      seed=int(p["seed"]) * 1000 + _SPLIT_STREAMS[split],
      num_classes=int(p["num_classes"]), image_size=int(p["image_size"]),
      patch_size=int(p["patch_size"]), num_locations=int(p["num_locations"]),
      pattern_seed=int(p["seed"]), background_std=float(p["background_std"]),
      pattern_amplitude=float(p["pattern_amplitude"]),
      pattern_noise=float(p["pattern_noise"]))


def toy_masks(toy_config: Mapping[str, Any] | None, split: str) -> np.ndarray:
  """Ground-truth masks bool [N, S, S] of a toy split, aligned with `index`.

  Read-only and computed once per (parameters, split): the explain stage
  asks for them in every batch, and generating a split takes a second.
  """
  params = tuple(sorted(toy_params(toy_config).items()))
  return _toy_masks(params, split)


@functools.lru_cache(maxsize=4)
def _toy_masks(params: tuple[tuple[str, Any], ...], split: str) -> np.ndarray:
  masks = make_toy_split(dict(params), split)[2]
  masks.flags.writeable = False
  return masks


def toy_source(toy_config: Mapping[str, Any] | None
               ) -> source_lib.ArraySource:
  """The configured toy dataset as an in-memory Source ('train' and 'test')."""
  p = toy_params(toy_config)
  splits = {}
  for split in _SPLIT_STREAMS:
    images, labels, _ = make_toy_split(p, split)
    splits[split] = (images, labels)
  size = int(p["image_size"])
  info = source_lib.DatasetInfo(
      name="toy", num_classes=int(p["num_classes"]),
      image_shape=(size, size, 3),
      num_examples={k: len(v[0]) for k, v in splits.items()},
      class_names=tuple(f"pattern_{k}" for k in range(int(p["num_classes"]))))
  return source_lib.ArraySource(info, splits)


def make_synthetic_linear(num_examples: int, *, seed: int, dataset_seed: int
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                     np.ndarray]:
  """The artificial dataset of the ROAR paper (Hooker et al. 2019, sec. 3).

  Each example is

      x = a * z / 10 + d * eta + eps / 10,    y = [z > 0],

  with z, eta ~ N(0, 1) scalars and eps ~ N(0, I_16) drawn per example, and
  a, d ~ N(0, I_16) drawn once per dataset, a set to zero beyond its first 4
  entries. Only features 1..4 carry z (the label); all 16 carry the shared
  distractor d * eta, which a linear model can cancel. The paper solves it
  with least squares.

  Args:
    num_examples: number of examples N.
    seed: seed of the per-example draws (z, eta, eps); train and test sets of
      one dataset use different seeds.
    dataset_seed: seed of a and d; train and test sets of one dataset share it.

  Returns:
    (x float32 [N, 16], y int64 [N] in {0, 1}, a float32 [16], d float32 [16]).
  """
  drng = np.random.default_rng([dataset_seed, 0])
  a = drng.standard_normal(NUM_LINEAR_FEATURES)
  a[NUM_INFORMATIVE:] = 0.0
  d = drng.standard_normal(NUM_LINEAR_FEATURES)
  rng = np.random.default_rng([seed, 1])
  z = rng.standard_normal(num_examples)
  eta = rng.standard_normal(num_examples)
  eps = rng.standard_normal((num_examples, NUM_LINEAR_FEATURES))
  x = a * z[:, None] / 10.0 + d * eta[:, None] + eps / 10.0
  y = (z > 0).astype(np.int64)
  return (x.astype(np.float32), y, a.astype(np.float32), d.astype(np.float32))
