"""Food-101 with ResNet-50 v1.5: the ROAR paper's setting (Hooker et al. 2019).

Batch 256, base learning rate 0.7, 20k steps (about 68 epochs: the epoch-80
decay is never reached), otherwise the ImageNet recipe (see
imagenet_resnet50.py). The paper's unmodified top-1 is 84.54%. TFDS `food101`
(its 'validation' split, 25,250 images, is the test split).

  python -m roar_jax.main --config=configs/food101_resnet50.py \
      --workdir=/tmp/food101 --mode=train

With `--mode=roar` it runs the paper's grid (`defaults.paper_grid`).
Expected (paper, Table 2, mean of 5 retrains, %; GRAD and IG
ranked by the signed value, as the paper's table was: the `gradient` and
`integrated_gradients` rows of this grid):

  estimator    ROAR 10  ROAR 50  ROAR 90  KAR 10  KAR 50  KAR 90
  Random        80.66    75.80    68.37   68.13   76.00   80.61
  GRAD          83.79    83.09    78.36   78.82   83.43   83.88
  IG            84.01    83.78    80.87   82.35   83.90   84.07
  SG-SQ-GRAD    79.29    64.83     8.34   73.05   80.18   82.13
  VAR-GRAD      79.55    67.40    15.69   74.24   79.97   82.10

Cost (derived in launch/README.md): one training run is 20k x 256 = 5.12M
images, about 0.70 TPU-v3-chip-hours (0.58 A100-hours); the full grid (851
runs: 17 estimators) about 600 v3-chip-hours.
"""

import ml_collections

from roar_jax.config import defaults


def get_config() -> ml_collections.ConfigDict:
  return defaults.paper_resnet50("food101", num_train=75_750, base_lr=0.7,
                                   batch_size=256, num_steps=20_000,
                                   eval_batch_size=256)
