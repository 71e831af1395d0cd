"""What an estimator name of `config.explain.estimators` means.

The one place that reads a name. Besides the saliency methods
(`saliency.available_methods()`: registered estimators and their `sg.`,
`sg_sq.`, `var.` ensembles) a grid may name:

- `sq.<method>`: the method's maps, ranked by their square (the ROAR paper's
  squared variants, supplement Fig. 6), whatever else is configured;
- `blur.<estimator>`: the estimator's transformed scores blurred by a
  Gaussian of `config.explain.smooth_sigma` pixels before ranking (the
  blur-bias control of Song, Cha and Seo 2023); <estimator> is a method or a
  `sq.` name;
- `random_smooth.<estimator>`: iid noise blurred by the sigma whose ranking
  matches <estimator>'s mean lag-1 spatial autocorrelation on the test split
  (`saliency/smoothing.py`); <estimator> must be in the grid;
- `oracle` (toy data only): the generator's ground-truth mask first.

`smooth_control` says which control a verdict is judged against besides
iid `random`.
"""

import dataclasses
from typing import Optional, Sequence

from roar_jax import hints
from roar_jax.saliency import registry

ORACLE = "oracle"
RANDOM = "random"
SMOOTH = "random_smooth"
SQUARED = "sq."
BLUR = "blur."
MATCHED = SMOOTH + "."
# The controls: rankings that carry no information about the model, judged
# against nothing themselves.
CONTROLS = (RANDOM, SMOOTH, ORACLE)
# Where the names are listed, for the message that refuses an unknown one.
LISTING = ("roar_jax.saliency.available_methods() lists the methods; a grid "
           "also takes sq.<method>, blur.<name>, oracle and "
           "random_smooth.<estimator>")


# The `explain.*` options each saliency method reads (dotted, under
# `explain.`). Options outside every entry (granularity, shard_size,
# methods.evaluations_per_step, methods.fast_pooling, and any new field)
# stay in every rank store's fingerprint; an option in an entry is in the
# fingerprints of the names that read it only. A method not listed (one a
# user registered) gets every option.
_NOISE = ("num_samples", "noise_scale")  # The sg./sg_sq./var. ensembles.
_BLUR = ("smooth_sigma",)  # blur.<e>, and random_smooth's own sigma.
OPTIONS_READ = {
    "gradient": (), "gradient_x_input": (), "guided_backprop": (),
    "gradcam": (), "guided_gradcam": (), "deeplift": (), "random": (),
    "sobel": (),
    "integrated_gradients": ("ig_steps",),
    "deepshap": ("num_references",),
    "random_smooth": _BLUR,
    "occlusion": ("methods.occlusion_window", "methods.occlusion_stride"),
    "rise": ("methods.rise_masks", "methods.rise_cells", "methods.rise_keep",
             "methods.rise_probabilities"),
    "lime": ("methods.num_segments", "methods.lime_samples",
             "methods.lime_kernel_width", "methods.lime_ridge"),
    "kernel_shap": ("methods.num_segments", "methods.shap_samples"),
    "xrai": ("methods.xrai_steps", "methods.xrai_min_pixel_diff",
             "methods.xrai_max_segments"),
    "expected_gradients": ("num_references", "methods.eg_samples"),
    "gradcam_pp": (),
    "guided_ig": ("methods.guided_ig_steps", "methods.guided_ig_fraction",
                  "methods.guided_ig_max_dist"),
    "blur_ig": ("methods.blur_ig_steps", "methods.blur_ig_max_sigma",
                "methods.blur_ig_grad_step"),
    "lrp_epsilon": ("methods.lrp_epsilon",),
    "lrp_epsilon_plus": ("methods.lrp_epsilon",),
    "lrp_epsilon_plus_flat": ("methods.lrp_epsilon",),
    "lrp_epsilon_alpha2_beta1": ("methods.lrp_epsilon",),
    "lrp_epsilon_gamma_box": ("methods.lrp_epsilon", "methods.lrp_gamma"),
}
METHOD_OPTIONS = frozenset(
    o for read in OPTIONS_READ.values() for o in read) | set(_NOISE)


@dataclasses.dataclass(frozen=True)
class Name:
  """A parsed estimator name.

  Attributes:
    name: the name as configured.
    method: the saliency method whose maps rank it; None for `oracle` and
      the matched controls, which are ranked apart.
    squared: ranked by the square of the maps (`sq.`).
    blurred: its scores are blurred before ranking (`blur.`).
    matched_to: for `random_smooth.<e>`, the estimator <e>.
  """
  name: str
  method: Optional[str]
  squared: bool = False
  blurred: bool = False
  matched_to: Optional[str] = None


def parse(name: str) -> Name:
  """Splits the prefixes off `name` (no check that the method exists)."""
  if name == ORACLE:
    return Name(name, None)
  if name.startswith(MATCHED):
    return Name(name, None, matched_to=name[len(MATCHED):])
  rest, blurred = name, name.startswith(BLUR)
  if blurred:
    rest = rest[len(BLUR):]
  squared = rest.startswith(SQUARED)
  if squared:
    rest = rest[len(SQUARED):]
  return Name(name, rest, squared, blurred)


def problem(name: str, methods: Sequence[str],
            estimators: Sequence[str]) -> Optional[str]:
  """Why `name` cannot rank a grid, or None when it can.

  Args:
    name: an entry of `config.explain.estimators`.
    methods: the saliency methods (`saliency.available_methods()`).
    estimators: the whole grid (a matched control's estimator must be in
      it).

  Returns:
    A short reason, or None.
  """
  if not isinstance(name, str):
    return f"{name!r} is not a name"
  parsed = parse(name)
  if parsed.matched_to is not None:
    target = parsed.matched_to
    if target not in estimators:
      return (f"{name!r} matches the smoothness of {target!r}, which is not "
              "in config.explain.estimators")
    if target == ORACLE or parse(target).matched_to is not None:
      return f"{name!r}: {target!r} has no smoothness of its own to match"
    return None
  if parsed.method is None:
    return None
  if parsed.method not in methods or parsed.method.startswith(BLUR):
    hint = hints.did_you_mean(name, spellings(methods, estimators))
    return f"unknown estimator {name!r}{hint} ({LISTING})"
  return None


def spellings(methods: Sequence[str],
              estimators: Sequence[str]) -> list[str]:
  """Every name a grid of `estimators` may hold, for "did you mean".

  Args:
    methods: the saliency methods (`saliency.available_methods()`).
    estimators: the grid (the matched controls it may name).

  Returns:
    The methods and `oracle`, each method also as `sq.`, each of those also
    as `blur.`, and `random_smooth.<e>` for the grid's other estimators.
  """
  ranked = [*methods, *(SQUARED + m for m in methods)]
  matched = [MATCHED + e for e in estimators
             if isinstance(e, str) and not is_control(e)]
  return [*ranked, *(BLUR + m for m in ranked), ORACLE, *matched]


def maps_method(name: str) -> Optional[str]:
  """The saliency method whose maps rank `name` (None: ranked apart)."""
  return parse(name).method


def transform_for(explain_config, name: str) -> str:
  """The ranking transform of one estimator.

  `sq.*` ranks by the square; otherwise the estimator's own entry of
  `explain.transforms`, else (for `blur.<e>`) <e>'s transform, else
  `explain.transform`.
  """
  parsed = parse(name)
  if parsed.squared:
    return "square"
  own = dict(explain_config.transforms)
  if name in own:
    return own[name]
  if parsed.blurred:
    return own.get(parsed.method, explain_config.transform)
  return explain_config.transform


def options_read(name: str) -> frozenset[str] | None:
  """The method options (of `METHOD_OPTIONS`) a name's ranking reads; None
  for a method not in `OPTIONS_READ` (it may read any).

  `oracle` and `random_smooth.<e>` read none (the matched control's sigma
  comes from <e>'s rank store, its input); `blur.<e>` reads <e>'s and
  `smooth_sigma`; a noise ensemble its method's and `num_samples`,
  `noise_scale`.
  """
  parsed = parse(name)
  if parsed.method is None:
    return frozenset()
  kind, _, base = parsed.method.rpartition(".")
  if base not in OPTIONS_READ:
    return None
  read = set(OPTIONS_READ[base]) | (set(_NOISE) if kind else set())
  return frozenset(read | (set(_BLUR) if parsed.blurred else set()))


def blur_sigma(explain_config, name: str) -> float:
  """The Gaussian blur of the scores before ranking (0: none)."""
  return float(explain_config.smooth_sigma) if parse(name).blurred else 0.0


def model_free(name: str) -> bool:
  """Whether the ranking depends on the data alone: `oracle`, and names
  whose maps come from a method registered `model_free` (the registry
  says). A matched control is not: its sigma comes from its estimator.
  A name that is no registered method (external maps) is not."""
  parsed = parse(name)
  if parsed.matched_to is not None:
    return False
  if parsed.method is None:
    return True
  estimator = _registered(parsed.method)
  return estimator is not None and estimator.model_free


def segmented(name: str) -> bool:
  """Whether the name's method works on regions the registry's host
  `prepare` step cuts from the image in pixel space (LIME, KernelSHAP,
  XRAI): the explain stage then passes the data's pixel statistics."""
  method = maps_method(name)
  estimator = method and _registered(method)
  return bool(estimator) and estimator.prepare is not None


def _registered(method: str) -> Optional[registry.Estimator]:
  """The registered estimator behind a method name (an ensemble's base),
  or None for a name the registry does not know."""
  try:
    return registry.parse(method)[1]
  except ValueError:
    return None


def is_control(name: str) -> bool:
  """`random`, `random_smooth`, `random_smooth.<e>` and `oracle`."""
  return name in CONTROLS or name.startswith(MATCHED)


def smooth_control(estimator: str, estimators: Sequence[str]
                   ) -> Optional[str]:
  """The smoothness-matched control of `estimator` in a grid.

  Args:
    estimator: an estimator of the grid.
    estimators: the grid's estimator names.

  Returns:
    `random_smooth.<estimator>` when the grid has it, else `random_smooth`
    when the grid has that; None for the controls themselves and when the
    grid has neither.
  """
  if is_control(estimator):
    return None
  if MATCHED + estimator in estimators:
    return MATCHED + estimator
  return SMOOTH if SMOOTH in estimators else None
