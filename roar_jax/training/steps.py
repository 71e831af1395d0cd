"""Train state and the pure, jittable train and eval steps."""

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state


class TrainState(train_state.TrainState):
  """Parameters, optimizer state, step, and BatchNorm statistics (if any)."""
  batch_stats: Any = None


def variables_of(state: TrainState) -> dict[str, Any]:
  """The model variables of a state, as `module.apply` takes them."""
  variables = {"params": state.params}
  if state.batch_stats is not None:
    variables["batch_stats"] = state.batch_stats
  return variables


def _loss(logits, labels, num_classes, label_smoothing):
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes),
                                label_smoothing) if label_smoothing else (
                                    jax.nn.one_hot(labels, num_classes))
  return optax.softmax_cross_entropy(logits, targets)


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array,
               *, label_smoothing: float = 0.0):
  """One optimizer step on a (global) batch.

  Args:
    state: the current train state.
    batch: {'image': float32 [B, H, W, C], 'label': int32 [B]}.
    rng: a key for stochastic layers, folded with the step so that every step
      draws fresh randomness from one run key.
    label_smoothing: label smoothing of the cross-entropy.

  Returns:
    (new state, {'loss', 'accuracy'} of this batch).
  """
  rng = jax.random.fold_in(rng, state.step)
  mutable = ["batch_stats"] if state.batch_stats is not None else []

  def loss_fn(params):
    if mutable:
      logits, updates = state.apply_fn(
          {"params": params, "batch_stats": state.batch_stats},
          batch["image"], train=True, mutable=mutable, rngs={"dropout": rng})
    else:
      logits, updates = state.apply_fn({"params": params}, batch["image"],
                                       train=True, rngs={"dropout": rng}), {}
    loss = _loss(logits, batch["label"], logits.shape[-1],
                 label_smoothing).mean()
    return loss, (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads)
  if mutable:
    state = state.replace(batch_stats=updates["batch_stats"])
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
  return state, {"loss": loss, "accuracy": accuracy}


def eval_step(state: TrainState, batch: dict[str, jax.Array]):
  """Sums over one padded eval batch; padded rows have mask 0.

  Args:
    state: the train state (BatchNorm in inference mode).
    batch: {'image', 'label', 'mask', 'index'} (index -1 on padded rows).

  Returns:
    ({'correct', 'loss', 'count'}: sums over the real rows of the batch,
     {'correct', 'index'}: per row, for the per-image record of a result).
  """
  logits = state.apply_fn(variables_of(state), batch["image"], train=False)
  mask = batch["mask"]
  correct = (jnp.argmax(logits, -1) == batch["label"]) * mask
  loss = _loss(logits, batch["label"], logits.shape[-1], 0.0) * mask
  sums = {"correct": correct.sum(), "loss": loss.sum(), "count": mask.sum()}
  rows = {"correct": correct.astype(jnp.int8), "index": batch["index"]}
  return sums, rows
