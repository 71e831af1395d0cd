"""DeepLIFT's Rescale rule for any JAX function of images, by tracing it.

`rescale(fn)` returns `g(x, x0)` whose value is `fn(x)` and whose gradient
with respect to `x` is DeepLIFT's multiplier (Shrikumar et al. 2017, Rescale
rule) relative to the reference `x0`; so `(x - x0) * grad g` sums to
`fn(x) - fn(x0)` ("summation to delta").

How: `fn` is traced once, and its trace is evaluated twice side by side, on x
and on x0, equation by equation. Equations that are linear in their inputs
(convolutions, dense layers, additions such as residual connections,
reshapes, means, BatchNorm in eval mode whose statistics are constants) run
as they are on both, so their gradients are the multipliers. Every nonlinear
equation of one varying input is replaced by a function with the same value
whose derivative is the secant slope (g(z) - g(z0)) / (z - z0) (the plain
derivative where |z - z0| < 1e-6):
- `max(u, v)` and `min(u, v)` (ReLU is max(z, 0); the small CNNs' pooling is
  elementwise maxima): max(u, v) = v + relu(u - v), so u gets the ReLU
  secant m of d = u - v and v gets 1 - m; this is exact, so max pooling keeps
  summation to delta (a constant operand, as ReLU's 0, just gets no gradient);
- `reduce_window_max` (flax `max_pool`) and `reduce_max`: written as maxima of
  slices, then as above;
- unary activations (exp, log, tanh, logistic, erf, sqrt, abs, ...): their
  own secant.
Nested calls (jit, custom_jvp such as jax.nn.relu, custom_vjp) are entered,
so the rule sees the primitives inside. A product of two varying values
(gates, attention) or a varying `select` has no Rescale form: it passes its
ordinary gradient, and summation to delta is then approximate.
"""

import itertools
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jex_core

from roar_jax.saliency import tracing

Array = jax.Array
_P = jex_core.primitives
EPS = 1e-6

# Elementwise nonlinearities of one input that get their secant slope.
_UNARY = {"exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic", "erf",
          "erfc", "sqrt", "rsqrt", "cbrt", "abs", "sin", "cos", "integer_pow",
          "square", "sign", "floor", "ceil", "round", "atan", "asinh"}


def _with_slope(out: Array, inputs, slopes) -> Array:
  """`out` in value; d out / d inputs[i] = slopes[i] (elementwise)."""
  value = lax.stop_gradient(out)
  for x, m in zip(inputs, slopes):
    x = jnp.where(jnp.isfinite(x), x, 0)  # -inf padding: no NaN in 0 * inf.
    value = value + lax.stop_gradient(m) * (x - lax.stop_gradient(x))
  return value


def _relu_secant(d: Array, d0: Array) -> Array:
  """(relu(d) - relu(d0)) / (d - d0); relu's derivative where they meet."""
  step = jnp.where(d > 0, 1.0, jnp.where(d < 0, 0.0, 0.5)).astype(d.dtype)
  diff = d - d0
  near = ~(jnp.abs(diff) >= EPS)  # Also true for inf - inf (padding).
  secant = (jnp.maximum(d, 0) - jnp.maximum(d0, 0)) / jnp.where(near, 1, diff)
  return jnp.where(near, step, secant)


def pair_max(u, v, u0, v0):
  """(max(u, v), max(u0, v0)), u and v getting the Rescale multipliers."""
  u, v = jnp.broadcast_arrays(u, v)
  u0, v0 = jnp.broadcast_arrays(u0, v0)
  out, out0 = jnp.maximum(u, v), jnp.maximum(u0, v0)
  finite = jnp.isfinite(u - v) & jnp.isfinite(u0 - v0)
  m = _relu_secant(jnp.where(finite, u - v, jnp.where(u > v, 1.0, -1.0)),
                   jnp.where(finite, u0 - v0, jnp.where(u > v, 1.0, -1.0)))
  return _with_slope(out, (u, v), (m, 1 - m)), out0


def _pair_min(u, v, u0, v0):
  out, out0 = pair_max(-u, -v, -u0, -v0)
  return -out, -out0


def _unary(prim, params, z, z0):
  out, out0 = prim.bind(z, **params), prim.bind(z0, **params)
  _, deriv = jax.jvp(lambda t: prim.bind(t, **params), (z,),
                     (jnp.ones_like(z),))
  diff = z - z0
  near = ~(jnp.abs(diff) >= EPS)
  m = jnp.where(near, deriv, (out - out0) / jnp.where(near, 1, diff))
  return _with_slope(out, (z,), (m,)), out0


def _window_max(x, x0, params):
  """reduce_window_max as maxima of its strided window-offset slices."""
  window = tuple(params["window_dimensions"])
  strides = tuple(params["window_strides"])
  padding = tuple(tuple(p) for p in params["padding"])
  if any(d != 1 for d in params.get("base_dilation", ())) or any(
      d != 1 for d in params.get("window_dilation", ())):
    raise ValueError("deeplift: dilated max pooling is not supported")
  pad = lambda a: lax.pad(a, jnp.array(-jnp.inf, a.dtype),
                          [(lo, hi, 0) for lo, hi in padding])
  x, x0 = pad(x), pad(x0)
  out_shape = [(n - w) // s + 1 for n, w, s in zip(x.shape, window, strides)]
  out = out0 = None
  for offset in itertools.product(*[range(w) for w in window]):
    limit = [o + (m - 1) * s + 1 for o, m, s in zip(offset, out_shape, strides)]
    piece = lax.slice(x, offset, limit, strides)
    piece0 = lax.slice(x0, offset, limit, strides)
    if out is None:
      out, out0 = piece, piece0
    else:
      out, out0 = pair_max(out, piece, out0, piece0)
  return out, out0


def _reduce_max(x, x0, axes):
  """reduce_max over `axes` as a chain of pairwise maxima of slices."""
  for axis in sorted(axes, reverse=True):
    out, out0 = lax.index_in_dim(x, 0, axis, False), lax.index_in_dim(
        x0, 0, axis, False)
    for i in range(1, x.shape[axis]):
      out, out0 = pair_max(out, lax.index_in_dim(x, i, axis, False), out0,
                           lax.index_in_dim(x0, i, axis, False))
    x, x0 = out, out0
  return x, x0


def _paired(eqn, ins):
  """`_apply` on (value, reference value, varying) triples."""
  vals, refs, varying = (list(a) for a in zip(*ins)) if ins else ([], [], [])
  outs, outs0 = _apply(eqn, vals, refs, varying)
  return [(o, o0, any(varying)) for o, o0 in zip(outs, outs0)]


def _eval(jaxpr, consts, vals, refs, varying):
  """Evaluates `jaxpr` on paired inputs; returns (outputs, reference outs)."""
  outs = tracing.evaluate(jaxpr, consts, list(zip(vals, refs, varying)),
                          _paired, lift=lambda c: (c, c, False))
  return [o[0] for o in outs], [o[1] for o in outs]


def _apply(eqn, vals, refs, varying):
  """One equation on (x values, x0 values); the Rescale rule where due."""
  name = eqn.primitive.name
  if not any(varying):
    out = tracing.bind(eqn, vals)
    return out, out
  floating = all(jnp.issubdtype(v.aval.dtype, jnp.floating)
                 for v in eqn.outvars)
  if not floating:
    return tracing.bind(eqn, vals), tracing.bind(eqn, refs)
  if name in ("max", "min"):
    fn = pair_max if name == "max" else _pair_min
    out, out0 = fn(vals[0], vals[1], refs[0], refs[1])
    return [out], [out0]
  if name == "reduce_window_max":
    out, out0 = _window_max(vals[0], refs[0], eqn.params)
    return [out], [out0]
  if name == "reduce_max":
    out, out0 = _reduce_max(vals[0], refs[0], eqn.params["axes"])
    return [out], [out0]
  if name in _UNARY and len(vals) == 1:
    out, out0 = _unary(eqn.primitive, eqn.params, vals[0], refs[0])
    return [out], [out0]
  sub = tracing.sub_jaxpr(eqn)
  if sub is not None:
    return _eval(sub.jaxpr, sub.consts, vals, refs, varying)
  return tracing.bind(eqn, vals), tracing.bind(eqn, refs)


def rescale(fn: Callable[[Array], Array]) -> Callable[[Array, Array], Array]:
  """DeepLIFT (Rescale rule) of a function of images, as described above.

  Args:
    fn: images [N, ...] -> outputs (e.g. logits [N, K]), a JAX function.

  Returns:
    g(x, x0) -> fn(x), whose gradient with respect to x is the DeepLIFT
    multiplier relative to the reference x0 (same shape as x).
  """
  def paired(x, x0):
    closed, shape = jax.make_jaxpr(fn, return_shape=True)(x)
    outs, _ = _eval(closed.jaxpr, closed.consts, [x], [x0], [True])
    return jax.tree.unflatten(jax.tree.structure(shape), outs)
  return paired


class _Rescaled:
  """`rescale` of a Partial's function, keeping its arguments as leaves."""

  def __init__(self, func):
    self.func = func

  def __call__(self, *args):
    *bound, x, x0 = args
    return rescale(lambda y: self.func(*bound, y))(x, x0)

  def __eq__(self, other):
    return isinstance(other, _Rescaled) and other.func == self.func

  def __hash__(self):
    return hash((_Rescaled, self.func))


def deeplift_logits(logits: Callable[[Array], Array]):
  """`Model.deeplift_logits` for a logits function: `rescale(logits)`.

  A `jax.tree_util.Partial` stays one (its weights remain pytree leaves, so
  explaining new weights reuses the compiled code).
  """
  if isinstance(logits, jax.tree_util.Partial):
    return jax.tree_util.Partial(_Rescaled(logits.func), *logits.args,
                                 **logits.keywords)
  return rescale(logits)
