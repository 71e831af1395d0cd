"""Walking a traced function (jaxpr) with some equations evaluated otherwise.

The estimators that rewrite a model's computation without per-architecture
code (fast max pooling in `lowering.py`, DeepLIFT's Rescale rule in
`rescale.py`, LRP in `lrp.py`) trace the model's logits function once and
evaluate its trace again, equation by equation, replacing some of them. This
module holds what they share:
- `evaluate`: runs a jaxpr with a hook that may replace any equation;
- `sub_jaxpr`: the jaxpr a call equation (jit, custom_jvp, ...) calls, so a
  walker can enter it and see the primitives inside;
- `bind`: an equation evaluated as it is, on new inputs;
- `inline`: the flat trace of a function, every nested call entered (for
  rewrites that look at several consecutive equations).
"""

from typing import Any, Callable, Optional, Sequence

import jax
from jax.extend import core as jex_core

# The call-like primitives a walker may enter. custom_jvp/custom_vjp calls are
# entered by their primal function: their custom rule is dropped, which is
# what a walker that replaces the differentiation wants.
CALLS = ("jit", "pjit", "closed_call", "core_call", "custom_jvp_call",
         "custom_vjp_call", "custom_vjp_call_jaxpr", "remat", "checkpoint")
# Only the plain calls: entering them changes nothing but the trace's nesting.
PLAIN_CALLS = ("jit", "pjit", "closed_call")


def sub_jaxpr(eqn, calls: Sequence[str] = CALLS
              ) -> Optional[jex_core.ClosedJaxpr]:
  """The ClosedJaxpr a call equation calls (None for any other equation).

  Args:
    eqn: a JaxprEqn.
    calls: the names of the call primitives to recognize.
  """
  if eqn.primitive.name not in calls:
    return None
  for name in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
    sub = eqn.params.get(name)
    if isinstance(sub, jex_core.ClosedJaxpr):
      return sub
    if isinstance(sub, jex_core.Jaxpr):
      return jex_core.ClosedJaxpr(sub, ())
  return None


def bind(eqn, invals: Sequence[Any]) -> list:
  """The equation's primitive applied to `invals`; always a list of outputs.

  The equation's context (e.g. a compute type set by the traced code) is
  re-entered, so the result is what the original equation computes.
  """
  params = eqn.primitive.get_bind_params(eqn.params)
  subfuns = []
  if isinstance(params, tuple):  # Older JAX: (subfuns, params).
    subfuns, params = params
  ctx = getattr(getattr(eqn, "ctx", None), "manager", None)
  if ctx is None:
    out = eqn.primitive.bind(*subfuns, *invals, **params)
  else:
    with ctx:
      out = eqn.primitive.bind(*subfuns, *invals, **params)
  return out if eqn.primitive.multiple_results else [out]


def evaluate(jaxpr: jex_core.Jaxpr, consts: Sequence[Any],
             args: Sequence[Any], apply: Callable[[Any, list], list],
             lift: Callable[[Any], Any] = lambda value: value) -> list:
  """Evaluates `jaxpr`, every equation through `apply(eqn, inputs)`.

  Args:
    jaxpr: the Jaxpr (not closed).
    consts: the values of its constvars (passed through `lift`).
    args: the values of its invars, as the walker represents them.
    apply: (eqn, input values) -> output values (a list); it may call
      `bind` for the equation as it is, or `evaluate` again on `sub_jaxpr`.
    lift: turns a constant or a literal into the walker's representation
      (e.g. a (value, reference value, varying) triple for DeepLIFT).

  Returns:
    The values of the jaxpr's outvars.
  """
  env = {}

  def read(v):
    return lift(v.val) if isinstance(v, jex_core.Literal) else env[v]

  for v, c in zip(jaxpr.constvars, consts):
    env[v] = lift(c)
  for v, a in zip(jaxpr.invars, args):
    env[v] = a
  for eqn in jaxpr.eqns:
    outs = apply(eqn, [read(v) for v in eqn.invars])
    for v, o in zip(eqn.outvars, outs):
      env[v] = o
  return [read(v) for v in jaxpr.outvars]


def _entering(eqn, invals: list) -> list:
  sub = sub_jaxpr(eqn)
  if sub is None:
    return bind(eqn, invals)
  return evaluate(sub.jaxpr, sub.consts, invals, _entering)


def inline(fn: Callable, *args) -> tuple[jex_core.ClosedJaxpr, list, Any]:
  """The trace of `fn(*args)` with every nested call (`CALLS`) entered.

  Args:
    fn: a JAX function of arrays.
    *args: its arguments (arrays, or tracers of an enclosing trace).

  Returns:
    (flat, consts, tree): `flat` is a ClosedJaxpr without call equations
    whose invars are the original trace's constants followed by the leaves
    of `args`; `consts` are the values of those constants (so `flat`
    evaluates on `consts + leaves`: constants that are tracers of an
    enclosing trace stay arguments); `tree` is the output's pytree
    structure.
  """
  closed, shapes = jax.make_jaxpr(fn, return_shape=True)(*args)
  consts = list(closed.consts)

  def flat_fn(consts, leaves):
    return evaluate(closed.jaxpr, consts, leaves, _entering)

  flat = jax.make_jaxpr(flat_fn)(consts, jax.tree.leaves(args))
  return flat, consts, jax.tree.structure(shapes)
