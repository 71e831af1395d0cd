"""The no-retrain metric registry: names -> per-image scores, needs, direction.

A metric is one module that registers itself, the way an estimator does
(`saliency.register`); `metric_plugins.py` imports the built-in ones. The
metrics stage (`metrics.py`) reads the test split once, hands each batch of
each estimator to every configured metric as a `Batch`, gathers the per-image
values over processes and writes one record per estimator and one
metrics.csv row per metric column. A new metric is one file plus its test:

    @metric_registry.register("mean_score", needs=("maps",),
                              lower_is_better=False)
    def mean_score(batch):
      return {"mean_score": batch.maps().mean(axis=(1, 2, 3))}

Its default summary is the per-image values' mean with a 95% Student-t
interval over the images (`curves.mean_ci`); its metrics.csv column is the
name. `config.metrics.names` lists the metrics a run computes.

What a metric may read from its `Batch` is what it declares in `needs`:
- 'model': the base model's logits (always there: `batch.logits`);
- 'ranks': the estimator's removal order from the rank store (`levels`);
- 'maps': the estimator's saliency maps of the batch, computed on demand
  with the explain stage's options (`batch.maps()`; an estimator given as
  external maps has none, and such a metric is skipped for it with a note);
- 'masks': the toy data's true masks (`batch.masks`, toy data only).
"""

import dataclasses
from typing import Any, Callable, Mapping, Optional

import numpy as np

from roar_jax import hints
from roar_jax.benchmark.roar import curves as curves_lib

NEEDS = ("model", "ranks", "maps", "masks")


@dataclasses.dataclass
class Batch:
  """One batch of test images of one estimator, as a metric sees it.

  Attributes:
    estimator: the estimator whose rankings or maps are scored.
    images: uint8 [B, H, W, C], the test images in the model's geometry.
    labels: int [B] true labels.
    indices: int [B] the images' indices in the test split.
    logits: normalized images [N, H, W, C] -> logits [N, K] (the base model).
    options: the metric options (`metric_options.Options`).
    config: the experiment config (read-only).
    levels: uint8 removal levels [B, H, W] or [B, H, W, C] (needs 'ranks').
    masks: bool [B, H, W] true masks (needs 'masks'; toy data).
    fill_value: the 'channel_mean' fill in [0, 255] per channel, or None.
    mean, std: the data normalization ([0, 1] units), per channel.
    seed: the run's seed.
    maps_fn: (estimator, normalized images, targets, indices) -> maps, the
      explain stage's estimator on these images (needs 'maps').
  """
  estimator: str
  images: np.ndarray
  labels: np.ndarray
  indices: np.ndarray
  logits: Callable
  options: Any
  config: Any
  levels: Optional[np.ndarray] = None
  masks: Optional[np.ndarray] = None
  fill_value: Optional[np.ndarray] = None
  mean: tuple = (0.0,)
  std: tuple = (1.0,)
  seed: int = 0
  maps_fn: Optional[Callable] = None
  _cache: dict = dataclasses.field(default_factory=dict, repr=False)

  def cached(self, name: str, compute: Callable[[], Any]) -> Any:
    """`compute()` once per batch and estimator, shared by the metrics that
    ask for the same name (deletion and insertion share one pass)."""
    if name not in self._cache:
      self._cache[name] = compute()
    return self._cache[name]

  def normalized(self) -> np.ndarray:
    """The images in the model's input space, float32."""
    def compute():
      c = self.images.shape[-1]
      mean = np.broadcast_to(np.asarray(self.mean, np.float32), (c,))
      std = np.broadcast_to(np.asarray(self.std, np.float32), (c,))
      return ((self.images.astype(np.float32) / 255.0 - mean) / std).astype(
          np.float32)
    return self.cached("normalized", compute)

  def predicted(self) -> np.ndarray:
    """The class the base model predicts on each clean image, int32 [B]."""
    return self.cached("predicted", lambda: np.asarray(
        np.argmax(np.asarray(self.logits(self.normalized())), -1), np.int32))

  def maps(self) -> np.ndarray:
    """The estimator's maps of the batch for the predicted classes, float32
    [B, H, W, C] in the model's input space."""
    if self.maps_fn is None:
      raise ValueError(f"estimator {self.estimator!r} has no maps to score "
                       "(a metric that needs 'maps' was not given them)")
    return self.cached("maps", lambda: np.asarray(self.maps_fn(
        self.estimator, self.normalized(), self.predicted(), self.indices),
        np.float32))


@dataclasses.dataclass(frozen=True)
class Metric:
  """A registered no-retrain metric.

  Attributes:
    name: the name `config.metrics.names` uses.
    per_image: Batch -> {series: float array [B, ...]}: this batch's
      per-image values (a curve per image, or a scalar).
    needs: what it reads from the Batch besides the model (`NEEDS`).
    lower_is_better: whether a low score is the better explanation (it
      orients the agreement table and the report's headings).
    widths: options -> {series: per-image shape}: the shapes of `per_image`'s
      series, so a process without images joins the gather with empty
      arrays. Default: one scalar series named after the metric.
    summarize: ({series: [N, ...] over all images}, options) ->
      {'value', 'ci95_low', 'ci95_high', 'n', ...}: the metric's entry in
      the estimator's record (a curve metric adds 'fractions', 'curve' and
      'curve_ci95', which the figure draws); it becomes one metrics.csv
      row. Default: the mean of the metric's scalar series with its 95%
      interval over the images.
    column: its name in metrics.csv (default: the metric's name; the curve
      metrics write '<name>_auc').
    title: a one-line description for tables and figures.
  """
  name: str
  per_image: Callable[[Batch], Mapping[str, np.ndarray]]
  needs: tuple[str, ...]
  lower_is_better: bool
  widths: Callable[[Any], Mapping[str, tuple]]
  summarize: Callable[[Mapping[str, np.ndarray], Any], dict[str, Any]]
  column: str
  title: str = ""


_REGISTRY: dict[str, Metric] = {}


def register(name: str, *, needs=("model",), lower_is_better: bool,
             widths=None, summarize=None, column=None, title: str = "",
             replace: bool = False):
  """Decorator: registers `per_image(batch) -> {series: [B, ...]}`.

  Args:
    name: the metric's name; letters, digits and underscores.
    needs: what it reads (`NEEDS`); 'model' is always given.
    lower_is_better: the direction of a better explanation.
    widths: see `Metric.widths` (default: one scalar series `name`).
    summarize: see `Metric.summarize` (default: mean and 95% interval of
      the series `name`).
    column: see `Metric.column` (default: `name`).
    title: a one-line description.
    replace: allow replacing a registered metric (tests).

  Returns:
    The decorator; it returns `per_image` unchanged.
  """
  check_declaration("metric", name, needs, NEEDS)

  def decorator(fn):
    check_free("metric", name, _REGISTRY, replace)
    _REGISTRY[name] = Metric(
        name, fn, tuple(dict.fromkeys(("model", *needs))),
        bool(lower_is_better), widths or (lambda options: {name: ()}),
        summarize or _scalar_summary(name), column or name, title)
    return fn

  return decorator


def check_declaration(kind: str, name: str, needs, known) -> None:
  """Raises ValueError for a bad name (letters, digits, underscores) or an
  unknown need; shared by the metric and protocol registries."""
  if not name or not name.replace("_", "").isalnum():
    raise ValueError(f"{kind} name {name!r} must be non-empty letters, "
                     "digits and underscores")
  unknown = [n for n in needs if n not in known]
  if unknown:
    raise ValueError(f"register({name!r}): unknown needs {unknown}; known: "
                     f"{list(known)}")


def check_free(kind: str, name: str, registry, replace: bool) -> None:
  """Raises ValueError if `name` is taken in `registry` and not `replace`."""
  if name in registry and not replace:
    raise ValueError(f"{kind} {name!r} is already registered; pass "
                     "replace=True to override it")


def _scalar_summary(name: str):
  """The mean of the series `name` over the images, with its 95% interval."""
  def summarize(values, options):
    del options
    value, low, high, n = curves_lib.mean_ci(
        np.asarray(values[name], np.float64))
    return {"value": value, "ci95_low": low, "ci95_high": high, "n": n}
  return summarize


def unregister(name: str) -> None:
  """Removes a registered metric (for tests and interactive use)."""
  _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
  """Every registered metric name, in registration order."""
  return tuple(_REGISTRY)


def get(name: str) -> Metric:
  """The registered metric `name`.

  Raises:
    ValueError: naming it, with the closest known name.
  """
  metric = _REGISTRY.get(name)
  if metric is None:
    known = list(_REGISTRY)
    raise ValueError(f"unknown metric {name!r}"
                     f"{hints.did_you_mean(name, known)} (known: {known})")
  return metric


# Prefixes of metrics.csv columns that score another model under a
# registered metric ('ff_deletion_auc': deletion on the fine-tuned model).
_PREFIXES: list[str] = []


def register_prefix(prefix: str) -> None:
  """Declares that columns `<prefix><metric column>` are a registered
  metric's scores of another model: they read that metric's direction."""
  if prefix not in _PREFIXES:
    _PREFIXES.append(prefix)


def direction(column: str) -> Optional[bool]:
  """Whether a low value is better for a metrics.csv column (None: no
  registered metric writes it, with or without a registered prefix)."""
  for metric in _REGISTRY.values():
    if metric.column == column:
      return metric.lower_is_better
  for prefix in _PREFIXES:
    if column.startswith(prefix):
      return direction(column[len(prefix):])
  return None


def columns() -> tuple[str, ...]:
  """The metrics.csv name of every registered metric, in registration
  order (the report's column order)."""
  return tuple(m.column for m in _REGISTRY.values())
