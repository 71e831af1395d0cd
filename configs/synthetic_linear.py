"""The ROAR paper's artificial-data experiment (sec. 3, Fig. 2), in seconds.

16 features of which 4 are informative, a least-squares linear classifier, and
three feature rankings (ground truth, random, inverted ground truth), scored
with and without retraining at every fraction k/16 of features removed:

  python -m roar_jax.main --config=configs/synthetic_linear.py \
      --workdir=/tmp/roar_linear --mode=roar

Expected (and asserted by tests/test_synthetic_linear.py): without retraining
the inverted ranking's accuracy falls early, so a wrong ranking looks
informative; with retraining it holds until 75% is removed, where the
informative features start to go.
"""

import ml_collections

from roar_jax.config import defaults


def get_config() -> ml_collections.ConfigDict:
  c = defaults.base_config()
  c.data.name = "synthetic_linear"
  c.linear = ml_collections.ConfigDict({
      "num_train": 5000,
      "num_test": 5000,
      "dataset_seed": 0,  # Draws a and d, once for the whole dataset.
  })
  c.roar = ml_collections.ConfigDict({"num_seeds": 5})
  return c
