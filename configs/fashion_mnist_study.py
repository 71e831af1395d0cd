r"""A Fashion-MNIST ROAR/KAR study: the paper's rows, both fills, a 91% model.

  python -m roar_jax.main --config=configs/fashion_mnist_study.py \
      --workdir=/tmp/fashion_mnist_study --mode=roar

All 60,000 / 10,000 images (../shared/data/fashion-mnist, else TFDS). Model
and recipe, for the base model and every retrain alike: the fast CNN
(models/fast_cnn.py, widths 16, 32, 64), 1 epoch at batch 128, Nesterov SGD
with a warm-up and cosine decay from 0.2, label smoothing 0.1, weight decay
5e-4, no augmentation: 90.9% test accuracy. Measured on 2 CPU cores shared
with another job: widths (8, 16, 32) reach 89.3% (87.0% with flip and
translate, which slow a 1-epoch run down). Grid: the controls
random, random_smooth (random's noise blurred by `explain.smooth_sigma`) and
sobel; gradient, integrated gradients and guided backprop ranked by the
signed value (the paper's Table 2 rows); SmoothGrad-squared and VarGrad of the
gradient (8 noise samples at scale 0.15; IG 16 steps); ROAR and KAR at 50% and
90%; both fills of the removed pixels (the training split's mean, the paper's,
and ROAD's noisy linear imputation); 3 seeds: 8 x 2 x 2 x 2 x 3 = 192
retrains, beside the no-retrain metrics on 500 test images and the
mask-leakage probe. A retrain takes about a minute on 2 cores, so the grid
takes about 3.5 hours there (minutes on an accelerator); it resumes, so it
may be run in parts (`--config.roar.fill=channel_mean` first). docs/results/fashion_mnist_study/ holds what a run found.
"""

import ml_collections

from roar_jax.config import defaults

NUM_TRAIN = 60_000
ESTIMATORS = ("random", "random_smooth", "sobel",
              "gradient", "integrated_gradients", "guided_backprop",
              "sg_sq.gradient", "var.gradient")


def get_config() -> ml_collections.ConfigDict:
  c = defaults.load("fashion_mnist")  # Data and statistics.
  c.data.path = defaults.shared_path("fashion-mnist")
  c.data.augment = "none"
  c.model.name = "fast_cnn"
  c.model.fast_cnn = ml_collections.ConfigDict({"widths": (16, 32, 64)})

  c.train.batch_size = 128
  c.train.eval_batch_size = 1000
  c.train.num_steps = NUM_TRAIN // c.train.batch_size
  c.train.optimizer = "sgd"
  c.train.momentum = 0.9
  c.train.nesterov = True
  c.train.learning_rate = 0.2
  c.train.weight_decay = 5e-4
  c.train.label_smoothing = 0.1
  c.train.schedule = "cosine"
  c.train.warmup_steps = c.train.num_steps // 5
  c.train.checkpoint_every = 0
  c.train.log_every = 100

  c.explain.estimators = ESTIMATORS
  c.explain.transforms = tuple(
      (e, "signed") for e in ("gradient", "integrated_gradients",
                              "guided_backprop"))
  c.explain.num_samples = 8
  c.explain.noise_scale = 0.15
  c.explain.ig_steps = 16
  c.explain.batch_size = 1000
  c.explain.shard_size = 10_000

  c.roar.thresholds = (0.5, 0.9)
  c.roar.modes = ("roar", "kar")
  c.roar.num_seeds = 3
  c.roar.fill = ("channel_mean", "noisy_linear")
  c.roar.degrade = "write"

  c.metrics.num_images = 500
  c.metrics.imputation = "cg"
  c.metrics.leakage_steps = 100
  return c
