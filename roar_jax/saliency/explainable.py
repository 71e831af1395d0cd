"""Wraps a project model and its weights as a `saliency.Model`.

The project's models follow one contract (see `small_cnn.py`): a field `act`
(the activation), `__call__(x, train=False) -> logits` and, for the
convolutional ones, `features(x, train=False)` and `head(f, train=False)`.
From it `explainable` builds:
- logits: `module.apply(variables, x)` in eval mode;
- guided_logits: the same module with `act=guided_relu` and the same weights;
- features / head: the split at the last convolutional block (None for a model
  without `features`, e.g. the MLP);
- deeplift_logits: DeepLIFT's Rescale rule of logits (`rescale.py`): every
  project model is made of convolutions, dense layers, BatchNorm, residual
  additions, ReLU and max pooling, all of which the rule covers exactly.

Each function is a `jax.tree_util.Partial` over the variables, so the jitted
estimators take the weights as arguments: new weights of the same shapes reuse
the compiled code.
"""

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax

from roar_jax.saliency import model as saliency_model
from roar_jax.saliency import rescale


@dataclasses.dataclass(frozen=True)
class _Apply:
  """variables, x -> module.apply(variables, x, train=False, method=method).

  A frozen dataclass, so two wrappers of equal modules compare (and hash)
  equal: the compilation cache sees the same function.
  """
  module: nn.Module
  method: Optional[str] = None

  def __call__(self, variables, x):
    return self.module.apply(variables, x, train=False,
                             method=self.method or "__call__")


def _relu_act(module: nn.Module) -> bool:
  """Whether the module's swappable activation is a ReLU (Guided Backprop
  is defined for ReLU networks: another activation has no guided form)."""
  fields = {f.name for f in dataclasses.fields(module)}
  return "act" in fields and module.act in (nn.relu, jax.nn.relu,
                                            saliency_model.guided_relu)


def _why_not_guided(module: nn.Module) -> str:
  """Why a module has no guided form (for the error of Guided Backprop)."""
  name = type(module).__name__
  if "act" not in {f.name for f in dataclasses.fields(module)}:
    return (f"{name} has no `act` field (its activation), which "
            "saliency.explainable swaps for the guided ReLU")
  return (f"{name}.act is {getattr(module.act, '__name__', module.act)}, not "
          "a ReLU: Guided Backprop is defined for ReLU networks")


def _why_no_split(module: nn.Module) -> Optional[str]:
  """Why a module has no features/head split (None: it has one)."""
  name = type(module).__name__
  missing = [m for m in ("features", "head")
             if not callable(getattr(type(module), m, None))]
  if not missing:
    return None
  return (f"{name} defines no {' and no '.join(f'`{m}`' for m in missing)} "
          "method; saliency.explainable splits a model into "
          "`features(x, train=False)` (up to its last convolutional block, "
          "[B, h, w, F]) and `head(f, train=False)` (from there to the "
          f"logits): add {'them' if len(missing) > 1 else 'it'} to {name}, or "
          "pass features=/head= to saliency.Model")


def explainable(module: nn.Module, variables: Any, *, pixel_mean=None,
                pixel_std=None) -> saliency_model.Model:
  """The `saliency.Model` of a project model with the given weights.

  Args:
    module: a flax.linen Module following the project's model contract.
    variables: its variables ({'params': ..., 'batch_stats': ...}).
    pixel_mean: the normalization of its inputs, image = (pixel - mean) /
      std with pixels in [0, 1], per channel or scalar (`config.data.mean`).
      Declared, integrated gradients and the perturbation methods start from
      the black image unless given `baseline=`; not declared, they need it.
    pixel_std: its std (`config.data.std`).

  Returns:
    A saliency.Model; guided_logits is None unless the module has an `act`
    field set to ReLU; features/head are None when it has no
    `features`/`head` methods (`lacks` says why, for the error of a method
    that needs them); deeplift_logits is always set.
  """
  if not isinstance(module, nn.Module):
    raise ValueError(f"module must be a flax.linen Module, got "
                     f"{type(module).__name__}")
  if not isinstance(variables, dict) or "params" not in variables:
    raise ValueError("variables must be a dict with 'params' (and "
                     "'batch_stats' for models with BatchNorm)")
  part = lambda m, method=None: jax.tree_util.Partial(_Apply(m, method),
                                                       variables)
  guided, lacks = None, []
  if _relu_act(module):
    guided = part(module.clone(act=saliency_model.guided_relu))
  else:
    lacks.append(("guided_logits", _why_not_guided(module)))
  features = head = None
  no_split = _why_no_split(module)
  if no_split is None:
    features, head = part(module, "features"), part(module, "head")
  else:
    lacks += [("features", no_split), ("head", no_split)]
  logits = part(module)
  return saliency_model.Model(logits=logits, guided_logits=guided,
                              features=features, head=head,
                              deeplift_logits=rescale.deeplift_logits(logits),
                              pixel_mean=pixel_mean, pixel_std=pixel_std,
                              lacks=tuple(lacks))
