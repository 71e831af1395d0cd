"""The estimator registry: names -> functions, and the names of noise ensembles.

An estimator is one function of an `Inputs` batch (see `inputs.py`) that
returns maps shaped like the images. Registering it makes its name usable in
`explain`, `explain_all` and configs; `ensemble=True` also makes `sg.<name>`,
`sg_sq.<name>` and `var.<name>` available:

    @saliency.register("gradient_times_two", ensemble=True)
    def gradient_times_two(inputs):
      return 2 * inputs.gradient()
"""

import dataclasses
from typing import Callable, Optional, Sequence, Union

from roar_jax import hints
from roar_jax.saliency import model as model_lib

# Noise-ensemble prefixes (docs/design.md): SmoothGrad, SmoothGrad-squared, VarGrad.
ENSEMBLES = ("sg", "sg_sq", "var")


@dataclasses.dataclass(frozen=True)
class Estimator:
  """A registered estimator.

  Attributes:
    name: the name configs use.
    fn: Inputs -> maps [N, H, W, C] (traced inside the jitted explain call).
    needs: the Model parts it reads besides `logits`, e.g. ('guided_logits',),
      checked before anything is compiled. `logits` is implied unless
      `model_free`.
    ensemble: whether noise ensembles of it are available.
    evaluations: model passes (forward + backward) per image, an int or a
      function of the Options; sizes the chunks so memory stays flat.
    model_free: a control that never calls the model (no target needed).
    prepare: a host function (images as numpy [B, H, W, C], options, array
      options) -> {name: numpy [B, ...]}, run once per batch before the
      jitted call (e.g. superpixels with scikit-image); the estimator reads
      the results as `inputs.extras[name]`. Estimators that share a prepare
      function share its results.
    random: it draws random numbers from `inputs.keys` (explain then needs a
      key; noise ensembles always do).
    baseline: it reads `inputs.baseline` (explain then needs `baseline=`
      unless the normalization is declared, whose black image is the
      default).
    references: it reads the `references=` option [R, H, W, C] (the explain
      stage then passes training images; DeepSHAP, Expected Gradients).
  """
  name: str
  fn: Callable
  needs: tuple[str, ...] = ()
  ensemble: bool = False
  evaluations: Union[int, Callable] = 1
  model_free: bool = False
  prepare: Optional[Callable] = None
  random: bool = False
  baseline: bool = False
  references: bool = False

  def cost(self, options) -> int:
    n = self.evaluations(options) if callable(self.evaluations) else (
        self.evaluations)
    return max(int(n), 0)


_REGISTRY: dict[str, Estimator] = {}
# Bumped by every (un)registration: part of the compilation cache key, so a
# replaced estimator is traced anew.
_VERSION = [0]


def version() -> int:
  return _VERSION[0]


def register(name: str, *, needs: Sequence[str] = (), ensemble: bool = False,
             evaluations: Union[int, Callable] = 1, model_free: bool = False,
             prepare: Optional[Callable] = None, random: bool = False,
             baseline: bool = False, references: bool = False,
             replace: bool = False):
  """Decorator: registers `fn(inputs) -> maps` under `name`.

  Args:
    name: the estimator's name; letters, digits and underscores.
    needs: Model parts besides `logits` that it reads ('guided_logits',
      'features', 'head').
    ensemble: also provide sg./sg_sq./var. noise ensembles of it.
    evaluations: model passes per image (int, or a function of the Options).
    model_free: it never calls the model.
    prepare: host pre-pass of the batch (see `Estimator.prepare`).
    random: it draws random numbers (needs explain's key).
    baseline: it reads `inputs.baseline` (see `Estimator.baseline`).
    references: it reads the `references=` option (see
      `Estimator.references`).
    replace: allow replacing an existing estimator of the same name.

  Returns:
    The decorator; it returns `fn` unchanged.
  """
  if not name or not name.replace("_", "").isalnum():
    raise ValueError(f"estimator name {name!r} must be non-empty letters, "
                     "digits and underscores (dots are reserved for "
                     "ensembles such as 'sg.gradient')")
  for part in needs:
    if part not in model_lib.PARTS:
      raise ValueError(f"register({name!r}): unknown model part {part!r} in "
                       f"needs; known: {list(model_lib.PARTS)}")

  def decorator(fn):
    if name in _REGISTRY and not replace:
      raise ValueError(f"estimator {name!r} is already registered; pass "
                       "replace=True to override it")
    if prepare is not None and ensemble:
      raise ValueError(f"register({name!r}): a method with a host prepare "
                       "step cannot have noise ensembles")
    _REGISTRY[name] = Estimator(name, fn, tuple(needs), bool(ensemble),
                                evaluations, bool(model_free), prepare,
                                bool(random), bool(baseline),
                                bool(references))
    _VERSION[0] += 1
    return fn

  return decorator


def unregister(name: str) -> None:
  """Removes a registered estimator (for tests and interactive use)."""
  _REGISTRY.pop(name, None)
  _VERSION[0] += 1


def reads_references(method: str) -> bool:
  """Whether `method` ('deepshap', 'sg.<name>', ...) reads `references=`."""
  return parse(method)[1].references


def available_methods() -> list[str]:
  """Every method name `explain` accepts, ensembles included, sorted."""
  names = set(_REGISTRY)
  for est in _REGISTRY.values():
    if est.ensemble:
      names.update(f"{kind}.{est.name}" for kind in ENSEMBLES)
  return sorted(names)


def parse(method: str) -> tuple[str | None, Estimator]:
  """'var.gradient' -> ('var', <gradient>); 'gradient' -> (None, <gradient>).

  Raises:
    ValueError: naming the method, with the closest known name if one is
      close (else every known name).
  """
  kind, est = None, None
  if isinstance(method, str):
    kind, _, base = method.rpartition(".")
    est = _REGISTRY.get(base)
  if est is not None and kind in ENSEMBLES and not est.ensemble:
    raise ValueError(f"unknown saliency method {method!r}: {base!r} has no "
                     "noise ensembles (it is registered without "
                     "ensemble=True)")
  if est is None or (kind and kind not in ENSEMBLES):
    known = available_methods()
    hint = hints.did_you_mean(method, known)
    listing = ("; saliency.available_methods() lists them all" if hint else
               f"; known: {known}")
    raise ValueError(f"unknown saliency method {method!r}{hint}{listing}")
  return (kind or None), est
