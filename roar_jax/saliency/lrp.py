"""Layer-wise relevance propagation of any JAX classifier, by tracing it.

LRP (Bach et al. 2015) sends the explained logit back through the network
layer by layer, each linear layer by a rule (`lrp_rules.py`); Montavon et
al. (2019) assign the rules by layer type in composites, as Zennit (Anders et
al. 2021) names them:
- `epsilon`: epsilon everywhere;
- `epsilon_plus`: z-plus for convolutions, epsilon for dense layers;
- `epsilon_plus_flat`: the same, flat at the first convolution or dense layer;
- `epsilon_gamma_box`: gamma for convolutions, epsilon for dense layers, z^B
  at the first convolution;
- `epsilon_alpha2_beta1`: alpha-beta (2, 1) for convolutions, epsilon for
  dense layers.
Every composite sends relevance through sums over pixels (global mean
pooling) and residual sums by the norm rule (in proportion to each summand),
through ReLU and max pooling by their gradient (ReLU passes it where the
input is positive, max pooling to the window's winner), as Zennit does.

How: `logits` is traced and its trace flattened (`tracing.inline`). A layer
is found where an equation is linear in the image-dependent value with
constant weights: a convolution or matrix product whose other operand does
not depend on the image (its kernel), a `reduce_sum`, or an addition of two
image-dependent values. The elementwise affine equations that follow it with
constant operands (its bias, an eval-mode BatchNorm's subtraction, scaling
and shift), while their value has no other use, are merged into it: the
rules see w = s * K and bias t, as Zennit's canonizers merge BatchNorm into
the preceding convolution. The trace is then evaluated with each layer's
output replaced by one whose gradient is the rule; the gradient of the
explained logit times its value (the one-hot output gradient times the
output, as in Zennit) is the relevance of the image's pixels. Nothing is
architecture-specific: any Model(logits=f) made of these parts works.

Departures: a product of two image-dependent values (attention, gating) or
any nonlinearity other than max (softmax inside the network, tanh) passes its
ordinary gradient, so conservation does not hold through it.
"""

import collections
import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jex_core
import numpy as np

from roar_jax.saliency import inputs as inputs_lib
from roar_jax.saliency import lrp_rules
from roar_jax.saliency import options as options_lib
from roar_jax.saliency import registry
from roar_jax.saliency import tracing

Array = jax.Array

# Elementwise equations affine in one image-dependent operand, whose other
# operand is constant: merged into the layer they follow.
_CHAIN = ("add", "sub", "mul", "div", "neg", "convert_element_type")
# Equations that only rearrange values: the box rule's bounds follow them.
_REARRANGE = ("reshape", "transpose", "squeeze", "expand_dims",
              "broadcast_in_dim", "convert_element_type", "slice", "rev",
              "copy")


@dataclasses.dataclass(frozen=True)
class Composite:
  """Rules by layer type (names of `lrp_rules` functions).

  Attributes:
    conv: the rule of convolutions.
    dense: the rule of dense layers (matrix products).
    first: the rule of the first layer of a kind in `first_kinds` (None:
      no special first layer).
    first_kinds: which layers may be that first layer ('conv', 'dense').
  """
  conv: str
  dense: str = "epsilon"
  first: Optional[str] = None
  first_kinds: tuple[str, ...] = ("conv", "dense")


COMPOSITES = {
    "epsilon": Composite("epsilon"),
    "epsilon_plus": Composite("zplus"),
    "epsilon_plus_flat": Composite("zplus", first="flat"),
    "epsilon_gamma_box": Composite("gamma", first="zbox",
                                   first_kinds=("conv",)),
    "epsilon_alpha2_beta1": Composite("alpha_beta"),
}


def _is_var(v) -> bool:
  return not isinstance(v, jex_core.Literal)


def _head_kind(eqn, vary: list[bool]) -> Optional[str]:
  """The layer type an equation starts ('conv', 'dense', 'norm'), or None."""
  name = eqn.primitive.name
  if not jnp.issubdtype(eqn.outvars[0].aval.dtype, jnp.floating):
    return None
  if name in ("conv_general_dilated", "dot_general") and sum(vary) == 1:
    return "conv" if name == "conv_general_dilated" else "dense"
  if name == "reduce_sum" and vary[0]:
    return "norm"
  if name == "add" and all(vary) and (eqn.invars[0].aval.shape ==
                                      eqn.invars[1].aval.shape):
    return "norm"
  return None


def _chainable(eqn, var, varying) -> bool:
  """Whether `eqn` is an affine function of `var` with constant operands."""
  if eqn.primitive.name not in _CHAIN or sum(
      v is var for v in eqn.invars) != 1:
    return False
  others = [v for v in eqn.invars if v is not var]
  if any(_is_var(v) and v in varying for v in others):
    return False
  if eqn.primitive.name == "div" and eqn.invars[0] is not var:
    return False
  return (eqn.outvars[0].aval.shape == var.aval.shape and
          jnp.issubdtype(eqn.outvars[0].aval.dtype, jnp.floating))


@dataclasses.dataclass
class _Layer:
  """A layer of the trace: its first equation, the merged ones, its rule.

  `values` collects, while the trace is walked, each equation's inputs
  (and which of them depends on the image); the layer is computed at its
  last equation, when every constant it merges is known.
  """
  head: object
  vary: list
  kind: str
  chain: list
  rule: str
  positions: dict = dataclasses.field(default_factory=dict)
  values: dict = dataclasses.field(default_factory=dict)
  bounds: Optional[tuple] = None

  def last(self):
    return (self.chain or [self.head])[-1]


def _layers(jaxpr, image_vars, composite: Composite) -> dict:
  """The layers of a flat trace: {id(each equation of a layer): _Layer}.

  Args:
    jaxpr: the flat Jaxpr (`tracing.inline`).
    image_vars: its invars that hold the image.
    composite: which rule each layer gets.
  """
  varying, uses, consumer = set(image_vars), collections.Counter(), {}
  for eqn in jaxpr.eqns:
    for v in eqn.invars:
      if _is_var(v):
        uses[v] += 1
        consumer[v] = eqn
    if any(_is_var(v) and v in varying for v in eqn.invars):
      varying.update(eqn.outvars)
  for v in jaxpr.outvars:
    if _is_var(v):
      uses[v] += 2  # An output is never merged into a following equation.
  found, first_done = {}, False
  for eqn in jaxpr.eqns:
    vary = [_is_var(v) and v in varying for v in eqn.invars]
    kind = _head_kind(eqn, vary) if any(vary) else None
    if kind is None:
      continue
    chain, var = [], eqn.outvars[0]
    while uses[var] == 1 and _chainable(consumer[var], var, varying):
      chain.append((consumer[var], consumer[var].invars.index(var)))
      var = consumer[var].outvars[0]
    rule = "norm" if kind == "norm" else getattr(composite, kind)
    if (kind in composite.first_kinds and composite.first and
        not first_done):
      rule, first_done = composite.first, True
    elif kind in composite.first_kinds:
      first_done = True
    layer = _Layer(eqn, vary, kind, [e for e, _ in chain], rule)
    found[id(eqn)] = layer
    for e, pos in chain:
      found[id(e)] = layer
      layer.positions[id(e)] = pos
  return found


def _scale(chain, values) -> Array:
  """s of the chain: the product of its multiplications and divisions."""
  s = 1.0
  for eqn, (invals, pos) in zip(chain, values):
    other = invals[1 - pos] if len(invals) == 2 else None
    name = eqn.primitive.name
    if name == "mul":
      s = s * other
    elif name == "div":
      s = s / other
    elif name == "neg" or (name == "sub" and pos == 1):
      s = -s
  return s


def _run_chain(chain, values, y):
  """The merged equations applied to y in place of the layer's raw output."""
  for eqn, (invals, pos) in zip(chain, values):
    ins = list(invals)
    ins[pos] = y
    (y,) = tracing.bind(eqn, ins)
  return y


def _affine(layer: _Layer, bounds) -> lrp_rules.Affine:
  """The layer's Affine from the values seen while walking the trace."""
  head_in, vary = layer.values["head"], layer.vary
  kernel_pos = [i for i, v in enumerate(vary) if not v]
  kernel = head_in[kernel_pos[0]] if layer.kind != "norm" else None

  def apply(us, k=None):
    ins, it = list(head_in), iter(us)
    ins = [next(it) if v else a for a, v in zip(ins, vary)]
    if k is not None:
      ins[kernel_pos[0]] = k
    return tracing.bind(layer.head, ins)[0]

  chain_values = [layer.values[id(e)] for e in layer.chain]
  inputs = [a for a, v in zip(head_in, vary) if v]
  raw = apply(inputs)
  z = _run_chain(layer.chain, chain_values, raw)
  t = _run_chain(layer.chain, chain_values, jnp.zeros_like(raw))
  s = jnp.broadcast_to(_scale(layer.chain, chain_values), z.shape)
  low, high = bounds if bounds is not None else (None, None)
  return lrp_rules.Affine(apply, inputs, kernel, s.astype(z.dtype), t, z,
                          low, high)


def _rule_output(layer: _Layer, bounds, eps: float, gamma: float) -> Array:
  """The layer's output: its value, with the layer's rule as its gradient."""
  if layer.rule == "zbox" and bounds is None:
    raise ValueError("lrp: the box rule needs the first convolution to read "
                     "the image (or a reshape of it), which it does not here")
  affine = _affine(layer, bounds)
  rule = {"epsilon": lambda a: lrp_rules.epsilon(a, eps),
          "gamma": lambda a: lrp_rules.gamma(a, gamma),
          "norm": lrp_rules.norm, "zplus": lrp_rules.zplus,
          "alpha_beta": lrp_rules.alpha_beta, "zbox": lrp_rules.zbox,
          "flat": lrp_rules.flat}[layer.rule]
  phi = rule(affine)
  return lax.stop_gradient(affine.z) + phi - lax.stop_gradient(phi)


def _walk(layers: dict, bounds: dict, eps: float, gamma: float):
  """The `tracing.evaluate` hook: layers by their rule, the rest as is."""
  def apply(eqn, invals):
    layer = layers.get(id(eqn))
    if layer is None:
      outs = tracing.bind(eqn, invals)
      if (eqn.primitive.name in _REARRANGE and _is_var(eqn.invars[0]) and
          eqn.invars[0] in bounds):
        low, high = bounds[eqn.invars[0]]
        bounds[eqn.outvars[0]] = (tracing.bind(eqn, [low] + invals[1:])[0],
                                  tracing.bind(eqn, [high] + invals[1:])[0])
      return outs
    if eqn is layer.head:
      layer.values["head"] = invals
      layer.bounds = bounds.get(next(
          v for v, f in zip(eqn.invars, layer.vary) if f))
    else:
      layer.values[id(eqn)] = (invals, layer.positions[id(eqn)])
    if eqn is not layer.last():
      return [None] * len(eqn.outvars)  # Never read: merged into the layer.
    return [_rule_output(layer, layer.bounds, eps, gamma)]
  return apply


def relevance(fn: Callable[[Array], Array], images: Array, targets: Array,
              composite: str, *, epsilon: float = 1e-6, gamma: float = 0.25,
              low: Optional[Array] = None,
              high: Optional[Array] = None) -> Array:
  """LRP maps of `fn`'s target logits under a composite.

  Args:
    fn: images [N, H, W, C] -> logits [N, K], a JAX function (eval mode).
    images: [N, H, W, C].
    targets: [N] int, the logit explained per image.
    composite: a name in `COMPOSITES`.
    epsilon: the epsilon rule's epsilon.
    gamma: the gamma rule's gamma.
    low, high: the box rule's bounds of the image, broadcast to it (needed
      by 'epsilon_gamma_box').

  Returns:
    [N, H, W, C] relevance; with zero biases and a tiny epsilon it sums to
    the target logit of each image.
  """
  if composite not in COMPOSITES:
    raise ValueError(f"lrp: unknown composite {composite!r}; known: "
                     f"{sorted(COMPOSITES)}")
  comp = COMPOSITES[composite]
  flat, consts, _ = tracing.inline(fn, images)
  image_var = flat.jaxpr.invars[len(consts)]
  layers = _layers(flat.jaxpr, [image_var], comp)

  def modified(x):
    bounds = {}
    if low is not None:
      bounds[image_var] = (jnp.broadcast_to(low, x.shape).astype(x.dtype),
                           jnp.broadcast_to(high, x.shape).astype(x.dtype))
    outs = tracing.evaluate(flat.jaxpr, flat.consts, list(consts) + [x],
                            _walk(layers, bounds, epsilon, gamma))
    return outs[0]

  out, vjp = jax.vjp(modified, images)
  start = jax.nn.one_hot(targets, out.shape[-1], dtype=out.dtype) * out
  return vjp(lax.stop_gradient(start))[0]


def box_bounds(images: Array, options: options_lib.Options
               ) -> tuple[Array, Array]:
  """The box rule's (low, high): the input space's black and white.

  With a declared normalization (the Model's or the call's pixel_mean and
  pixel_std), low = (0 - mean) / std and high = (1 - mean) / std per
  channel, the images of pixels 0 and 1. Without one, each image's own
  per-channel minimum and maximum over its pixels: the smallest box that
  holds the image. (Per image rather than per batch, so a map does not
  depend on the images it is explained with.)
  """
  if options.declares_normalization():
    mean = np.asarray(options.pixel_mean or 0.0, np.float32).reshape(-1)
    std = np.asarray(options.pixel_std or 1.0, np.float32).reshape(-1)
    return jnp.asarray((0 - mean) / std), jnp.asarray((1 - mean) / std)
  axes = tuple(range(1, images.ndim - 1))
  return (jnp.min(images, axis=axes, keepdims=True),
          jnp.max(images, axis=axes, keepdims=True))


def _estimator(composite: str):
  """The estimator of one composite (registered below)."""
  def estimate(inputs: inputs_lib.Inputs) -> Array:
    def compute():
      x = inputs.images
      low = high = None
      if COMPOSITES[composite].first == "zbox":
        low, high = box_bounds(x, inputs.options)
      inputs_lib.count_passes(int(x.shape[0]))
      return relevance(inputs.part("logits"), x, inputs.targets, composite,
                       epsilon=inputs.options.lrp_epsilon,
                       gamma=inputs.options.lrp_gamma, low=low, high=high)
    return inputs.cached(f"lrp_{composite}", compute)

  estimate.__name__ = f"lrp_{composite}"
  estimate.__doc__ = (f"LRP under the composite {composite!r} (see "
                      "roar_jax.saliency.lrp); the map sums to about the "
                      "target logit.")
  return estimate


# lrp_epsilon, lrp_epsilon_plus, lrp_epsilon_plus_flat, lrp_epsilon_gamma_box,
# lrp_epsilon_alpha2_beta1. A pass runs each layer's rule terms forward and
# backward: about twice a gradient's work.
for _name in COMPOSITES:
  registry.register(f"lrp_{_name}", evaluations=2)(_estimator(_name))
