"""Fashion-MNIST with the sanity-check CNN (Adebayo et al. 2018).

  python -m roar_jax.main --config=configs/fashion_mnist.py --workdir=/tmp/fm --mode=train

TFDS `fashion_mnist` by default, or a directory of the four IDX files:

  --config.data.path=../shared/data/fashion-mnist

The paper trains with Adam for 20k iterations; the default here is a reduced
3,000 steps at batch 128 with Adam 1e-3 (about 90% test accuracy, a few minutes
on a CPU). `config.model.name='sanity_mlp'` gives the paper's MLP.
"""

import ml_collections

from roar_jax.config import defaults


def get_config() -> ml_collections.ConfigDict:
  c = defaults.base_config()
  c.model.name = "sanity_cnn"
  c.data.name = "fashion_mnist"
  c.data.image_size = 28
  c.data.mean = (0.2860,)
  c.data.std = (0.3530,)

  c.train.batch_size = 128
  c.train.eval_batch_size = 512
  c.train.num_steps = 3000
  c.train.optimizer = "adam"
  c.train.learning_rate = 1e-3
  c.train.checkpoint_every = 500
  c.train.log_every = 100
  return c
