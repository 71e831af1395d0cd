"""Optimizers and learning-rate schedules built from `config.train`."""

from typing import Any, Mapping

import flax
import jax
import optax


def learning_rate_schedule(train_config: Mapping[str, Any]) -> optax.Schedule:
  """The learning rate per step.

  `schedule`:
  - 'constant': `learning_rate` throughout;
  - 'cosine': linear warm-up over `warmup_steps`, then cosine decay to 0;
  - 'step': linear warm-up from 0 over `warmup_steps` (the ROAR paper's 5
    epochs), then `learning_rate` multiplied by `decay_factor` at each of
    `decay_steps` (cumulatively: x0.1 at epoch 30, x0.01 at 60, x0.001 at 80).

  Args:
    train_config: `config.train`.

  Returns:
    An optax schedule.
  """
  lr = train_config["learning_rate"]
  kind = train_config["schedule"]
  warmup = int(train_config["warmup_steps"])
  if kind == "constant":
    return optax.constant_schedule(lr)
  if kind == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, max(warmup, 1), max(int(train_config["num_steps"]), warmup + 1))
  if kind == "step":
    factor = train_config["decay_factor"]
    decay = optax.piecewise_constant_schedule(
        lr, {int(s) - warmup: factor for s in train_config["decay_steps"]})
    if not warmup:
      return decay
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), decay], [warmup])
  raise ValueError(f"config.train.schedule={kind!r}: expected 'constant', "
                   "'cosine' or 'step'")


def _decay_mask(params):
  """True for every parameter except BatchNorm scales and offsets.

  The ROAR code decays every trainable variable whose name does not contain
  'batch_normalization'; our BatchNorm modules are named bn*, stem_bn, proj_bn.
  """
  flat = flax.traverse_util.flatten_dict(params)
  mask = {path: not any(p.startswith(("bn", "stem_bn", "proj_bn"))
                        for p in path) for path in flat}
  return flax.traverse_util.unflatten_dict(mask)


def create_optimizer(train_config: Mapping[str, Any]) -> optax.GradientTransformation:
  """The optimizer of `config.train` (sgd with (Nesterov) momentum, or adam).

  Weight decay is an L2 penalty wd/2 * |w|^2 on all but BatchNorm parameters,
  added to the gradient before the optimizer (as the ROAR code adds
  `weight_decay * l2_loss` to its loss), not decoupled AdamW-style.

  Args:
    train_config: `config.train`.

  Returns:
    An optax GradientTransformation.
  """
  schedule = learning_rate_schedule(train_config)
  name = train_config["optimizer"]
  if name == "sgd":
    opt = optax.sgd(schedule, momentum=train_config["momentum"] or None,
                    nesterov=bool(train_config["nesterov"]))
  elif name == "adam":
    opt = optax.adam(schedule)
  else:
    raise ValueError(f"config.train.optimizer={name!r}: expected 'sgd' or 'adam'")
  wd = train_config["weight_decay"]
  if wd:
    opt = optax.chain(optax.add_decayed_weights(wd, mask=_decay_mask), opt)
  return opt


def tree_size(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))
