"""The LRP rules, each as one layer's modified backward pass.

A layer is `z = s * L(x) + t` (`Affine`): L a convolution or matrix product
with a constant kernel K (or a kernel-free linear map: a sum over pixels, the
sum of a residual connection), and s, t constant per output element. s and t
hold what follows L up to the next nonlinearity (the layer's bias, an
eval-mode BatchNorm), so the rules see the layer with BatchNorm merged in, as
Zennit's canonizers make it: effective weights w_ji = s_j K_ji and bias t_j.
Because s_j scales a whole row of weights, the positive part of the
effective weights is (s K)^+ = s^+ K^+ + s^- K^- (elementwise, with
a^+ = max(a, 0), a^- = min(a, 0)): the rules need L with K^+ and K^- only.

Each rule returns `phi`, a function of the layer's input whose value is
irrelevant and whose vector-Jacobian product maps the relevance R of the
outputs to the relevance of the inputs; the caller returns
`z + phi - stop_gradient(phi)` (value z). The inputs enter through `carry(c)`
(value c, derivative c), so L(carry(c)) is both the forward term of a rule
and, differentiated, the c * L^T(.) of its backward term: one evaluation of
L per term. With stab(a) = a + eps * sign(a) (sign(0) = 1) and g = R / stab(.)
(Zennit's rules, Anders et al. 2021; Montavon et al. 2019):
- epsilon: R_i = x_i sum_j w_ji R_j / stab_eps(z_j);
- z-plus: R_i = sum_j (x_i^+ w_ji^+ + x_i^- w_ji^-) g_j with
  g_j = R_j / stab(sum_i (x_i^+ w_ji^+ + x_i^- w_ji^-) + t_j^+);
- alpha-beta: alpha times the z-plus terms minus beta times the terms of the
  opposite sign (x^+ w^-, x^- w^+, bias t^-) over their own sum;
- gamma: weights w + gamma w^+ for the positive terms (x^+ with them, x^-
  with w + gamma w^-, bias t + gamma t^+) where z_j > 0, and the mirror image
  where z_j < 0 (Zennit's generalized gamma rule);
- z^B (box): R_i = (x_i w_ji - l_i w_ji^+ - h_i w_ji^-) g_j over
  z_j - sum_i (l_i w_ji^+ + h_i w_ji^-) (the bias cancels, as in Zennit);
- flat: every weight 1, no bias, every input 1: R_i = sum_j R_j / n_j for the
  n_j inputs of output j;
- norm (pooling sums and residual sums, no weights): the epsilon rule with a
  fixed 1e-6: each summand gets relevance in proportion to its value.
"""

import dataclasses
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
sg = lax.stop_gradient
# The stabilizer of every rule but epsilon (Zennit's default).
STABILIZER = 1e-6


def stabilize(z: Array, eps: float) -> Array:
  """z + eps * sign(z), with sign(0) = 1: no division by zero."""
  return z + eps * jnp.where(z >= 0, 1.0, -1.0).astype(z.dtype)


def carry(c: Array, x: Array) -> Array:
  """An array with the value of c and derivative c with respect to x."""
  c = sg(jnp.broadcast_to(c, x.shape).astype(x.dtype))
  return c + c * (x - sg(x))


def _pos(a):
  return jnp.maximum(a, 0)


def _neg(a):
  return jnp.minimum(a, 0)


@dataclasses.dataclass
class Affine:
  """One layer of the trace, z = scale * apply(inputs) + bias.

  Attributes:
    apply: (arrays like `inputs`, kernel or None) -> L of them; None: the
      layer's own kernel.
    inputs: the layer's varying inputs (two for a residual sum).
    kernel: K, or None for a kernel-free layer (then only `full` is valid).
    scale, bias: s and t, shaped like z.
    z: the layer's output.
    low, high: the bounds of the input for the box rule (or None).
  """
  apply: Callable[[Sequence[Array], Optional[Array]], Array]
  inputs: Sequence[Array]
  kernel: Optional[Array]
  scale: Array
  bias: Array
  z: Array
  low: Optional[Array] = None
  high: Optional[Array] = None

  def full(self, us: Sequence[Array]) -> Array:
    """The effective weights applied to `us`: s * L(us)."""
    return self.scale * self.apply(us, None)

  def signed(self, u: Array) -> tuple[Array, Array]:
    """(w^+ u, w^- u) for the effective weights w = s K."""
    lp = self.apply([u], _pos(self.kernel))
    ln = self.apply([u], _neg(self.kernel))
    sp, sn = _pos(self.scale), _neg(self.scale)
    return sp * lp + sn * ln, sp * ln + sn * lp

  def x(self) -> Array:
    return self.inputs[0]


def epsilon(layer: Affine, eps: float) -> Array:
  """The epsilon rule (also `norm`, the same with the fixed stabilizer)."""
  y = layer.full([carry(u, u) for u in layer.inputs])
  return y / sg(stabilize(layer.z, eps))


def norm(layer: Affine) -> Array:
  return epsilon(layer, STABILIZER)


def _split_input(layer: Affine):
  """(w^+ x^+, w^- x^+, w^+ x^-, w^- x^-), each carrying its derivative."""
  x = layer.x()
  pa, na = layer.signed(carry(_pos(x), x))
  pb, nb = layer.signed(carry(_neg(x), x))
  return pa, na, pb, nb


def zplus(layer: Affine) -> Array:
  pa, _, _, nb = _split_input(layer)
  y = pa + nb
  return y / sg(stabilize(y + _pos(layer.bias), STABILIZER))


def alpha_beta(layer: Affine, alpha: float = 2.0, beta: float = 1.0) -> Array:
  pa, na, pb, nb = _split_input(layer)
  yp, yn = pa + nb, na + pb
  dp = sg(stabilize(yp + _pos(layer.bias), STABILIZER))
  dn = sg(stabilize(yn + _neg(layer.bias), STABILIZER))
  return alpha * yp / dp - beta * yn / dn


def gamma(layer: Affine, gamma_: float) -> Array:
  """Zennit's generalized gamma rule (positive and negative outputs)."""
  pa, na, pb, nb = _split_input(layer)
  t = layer.bias
  # (w + gamma w^+) x^+ + (w + gamma w^-) x^-, and the opposite pairing.
  up = (1 + gamma_) * pa + na + pb + (1 + gamma_) * nb
  down = pa + (1 + gamma_) * na + (1 + gamma_) * pb + nb
  dp = sg(stabilize(up + t + gamma_ * _pos(t), STABILIZER))
  dn = sg(stabilize(down + t + gamma_ * _neg(t), STABILIZER))
  z = sg(layer.z)
  return (jnp.where(z > 0, up / dp, 0.0) +
          jnp.where(z < 0, down / dn, 0.0))


def zbox(layer: Affine) -> Array:
  x = layer.x()
  pl, _ = layer.signed(carry(layer.low, x))
  _, nh = layer.signed(carry(layer.high, x))
  y = layer.full([carry(x, x)]) - pl - nh
  return y / sg(stabilize(y, STABILIZER))


def flat(layer: Affine) -> Array:
  x = layer.x()
  y = layer.apply([carry(jnp.ones_like(x), x)], jnp.ones_like(layer.kernel))
  return y / sg(stabilize(y, STABILIZER))
