"""Toy experiment: synthetic images with known class evidence, a small CNN.

Trains on a laptop CPU in under a minute (15-20 s on 2 cores):

  python -m roar_jax.main --config=configs/toy.py --workdir=/tmp/roar_toy --mode=train

and runs the whole ROAR/KAR benchmark (base model, rank store, no-retrain
metrics and 12 leakage probes, 60 retrains: 3 estimators x 2 thresholds x
ROAR/KAR x 5 seeds, report) in about a quarter of an hour on 2 cores: the
stages without the metrics took 9.2 min on a quiet machine; the metrics (200
test images) took 163 s and the leakage probes 149 s on a machine at load 7:

  python -m roar_jax.main --config=configs/toy.py --workdir=/tmp/roar_toy --mode=roar

Each image is noise with a class-specific pattern pasted at one of a few
positions; the generator knows which pixels carry the class (the ground-truth
mask), so later stages can check that good saliency methods find them. The
small CNN reaches well over 90% test accuracy (4 classes, chance 25%).
"""

import ml_collections

from roar_jax.config import defaults


def get_config() -> ml_collections.ConfigDict:
  c = defaults.base_config()
  c.model.name = "small_cnn"
  c.model.small_cnn = ml_collections.ConfigDict({"width": 16})

  c.data.name = "toy"
  c.data.image_size = 32
  c.data.mean = (0.5, 0.5, 0.5)
  c.data.std = (0.25, 0.25, 0.25)
  c.data.toy = ml_collections.ConfigDict({
      "num_train": 4000,
      "num_test": 1000,
      "num_classes": 4,
      "image_size": 32,
      "seed": 0,
  })

  c.train.batch_size = 64
  c.train.eval_batch_size = 200
  c.train.num_steps = 300
  c.train.optimizer = "adam"
  c.train.learning_rate = 2e-3
  c.train.log_every = 50
  c.train.checkpoint_every = 100

  # ROAR/KAR on the toy data: the grid finishes in minutes on a CPU.
  # `oracle` ranks the generator's ground-truth pixels first (the best
  # possible estimator), `random` is the control every method must beat.
  c.explain.estimators = ("gradient", "oracle", "random")
  c.explain.batch_size = 200
  c.explain.shard_size = 1000
  c.roar.thresholds = (0.5, 0.9)  # With 5 seeds: 60 retrains of 300 steps.
  # No-retrain metrics on a fifth of the test split.
  c.metrics.num_images = 200
  return c
