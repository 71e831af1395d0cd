"""Max pooling with a fast gradient: the same function, differentiated cheaply.

`lax.reduce_window` max pooling (what `flax.linen.max_pool` binds) is
differentiated through `select_and_scatter_add`, which XLA:CPU runs slowly: on
the small CNN of bench/saliency.py it takes most of the input-gradient time.
`fast_pooling(fn)` traces `fn` and evaluates the trace again with every float
`reduce_window_max` replaced by an equivalent formulation whose gradient is
elementwise and fuses:
- non-overlapping windows (stride = window, no padding): a reshape that splits
  each pooled axis into (outputs, window), then `max` over the window axes;
- any other window: the elementwise maximum of the strided window-offset
  slices of the (-inf padded) input.
Forward values are identical (max is exact). Gradients are identical except at
exact ties inside a window, where the gradient is split among the tied inputs
(`select_and_scatter` gives it all to the first); both are valid subgradients.

Nested `jit` calls are rewritten too; other higher-order primitives (scan,
cond, custom_jvp/vjp rules) are kept as they are.
"""

import itertools
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jex_core

from roar_jax.saliency import tracing

_MAX_POOL = jex_core.primitives.reduce_window_max_p


def _pool_by_reshape(x, window, strides, padding):
  """Non-overlapping windows: crop the VALID remainder, reshape, max."""
  crop = tuple(slice(0, (n // w) * w) for n, w in zip(x.shape, window))
  x = x[crop]
  shape, axes = [], []
  for n, w in zip(x.shape, window):
    if w == 1:
      shape.append(n)
    else:
      shape += [n // w, w]
      axes.append(len(shape) - 1)
  del strides, padding
  return jnp.max(x.reshape(shape), axis=tuple(axes)) if axes else x


def _pool_by_slices(x, window, strides, padding):
  """Any window: max over the strided slices at each window offset."""
  if any(lo or hi for lo, hi in padding):
    x = lax.pad(x, jnp.array(-jnp.inf, x.dtype),
                [(lo, hi, 0) for lo, hi in padding])
  out_shape = [(n - w) // s + 1 for n, w, s in zip(x.shape, window, strides)]
  out = None
  for offset in itertools.product(*[range(w) for w in window]):
    limit = [o + (m - 1) * s + 1
             for o, m, s in zip(offset, out_shape, strides)]
    piece = lax.slice(x, offset, limit, strides)
    out = piece if out is None else jnp.maximum(out, piece)
  return out


def _max_pool(x, params):
  window = tuple(params["window_dimensions"])
  strides = tuple(params["window_strides"])
  padding = tuple(tuple(p) for p in params["padding"])
  if window == strides and not any(lo or hi for lo, hi in padding):
    return _pool_by_reshape(x, window, strides, padding)
  return _pool_by_slices(x, window, strides, padding)


def _rewritable(eqn) -> bool:
  if eqn.primitive is not _MAX_POOL:
    return False
  params = eqn.params
  x = eqn.invars[0].aval
  return (jnp.issubdtype(x.dtype, jnp.floating)
          and all(d == 1 for d in params.get("base_dilation", ()))
          and all(d == 1 for d in params.get("window_dilation", ())))


def _sub_jaxpr(eqn):
  """The ClosedJaxpr a jit/closed_call equation calls, else None."""
  return tracing.sub_jaxpr(eqn, tracing.PLAIN_CALLS)


def _contains_pooling(jaxpr) -> bool:
  for eqn in jaxpr.eqns:
    sub = _sub_jaxpr(eqn)
    if _rewritable(eqn) or (sub is not None and _contains_pooling(sub.jaxpr)):
      return True
  return False


def _apply(eqn, invals):
  sub = _sub_jaxpr(eqn)
  if _rewritable(eqn):
    return [_max_pool(invals[0], eqn.params)]
  if sub is not None and _contains_pooling(sub.jaxpr):
    return tracing.evaluate(sub.jaxpr, sub.consts, invals, _apply)
  return tracing.bind(eqn, invals)


def fast_pooling(fn: Callable) -> Callable:
  """`fn` with its max pooling rewritten as above (same values).

  Args:
    fn: a function of one array (e.g. Model.logits). If its trace has no
      rewritable max pooling, `fn` itself is called.

  Returns:
    A function of one array.
  """
  def wrapped(x):
    closed, shapes = jax.make_jaxpr(fn, return_shape=True)(x)
    if not _contains_pooling(closed.jaxpr):
      return fn(x)
    out = tracing.evaluate(closed.jaxpr, closed.consts, [x], _apply)
    return jax.tree.unflatten(jax.tree.structure(shapes), out)
  return wrapped
