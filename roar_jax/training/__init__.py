"""Training: train state, pure steps, mesh and shardings, optimizers, checkpoints."""

from roar_jax.training.mesh import create_mesh, data_sharding, replicated, to_global
from roar_jax.training.optimizers import create_optimizer, learning_rate_schedule
from roar_jax.training.steps import TrainState, eval_step, train_step, variables_of
from roar_jax.training.trainer import (create_state, evaluate, load_metrics,
                                       load_model, load_state, params_checksum,
                                       train_and_evaluate)
