r"""The ROAR paper's central CIFAR-10 finding, on a model that reaches 75%.

  python -m roar_jax.main --config=configs/cifar10_study.py \
      --workdir=/tmp/cifar10_study --mode=roar

Full CIFAR-10 (50,000 / 10,000 images) and the fast recipe
(configs/cifar10_fast.py, 3 epochs, about 2.5 minutes on 2 CPU cores) for the
base model and every retrain alike, as the protocol retrains with the base
model's recipe. The grid is the paper's Table 2 question, sized to 2 cores:
random and the smoothness control random_smooth (random's noise blurred by
`explain.smooth_sigma`), gradient ranked by the signed value (Table 2's base
rows), and its SmoothGrad-squared and VarGrad ensembles; ROAR at 90%; both
fills of the removed pixels (the training split's channel mean, the paper's,
and ROAD's noisy linear imputation, which hides the mask's shape); 3 seeds:
5 x 2 x 3 = 30 retrains, beside the no-retrain metrics on 500 test images and
the mask-leakage probe. The ensembles draw 8 noise samples (the paper: 15)
at noise scale 0.15: the saliency of 60,000 images is the grid's second cost
after retraining. docs/results/cifar10_study/ holds the report of a run and
its findings; configs/cifar10_small_study.py is the earlier 5,000-image study
on a 35% model.

Data: ../shared/data/cifar10-jpeg.tar.gz when this checkout has it, else TFDS
`cifar10`.
"""

import ml_collections

from roar_jax.config import defaults

ESTIMATORS = ("random", "random_smooth", "gradient", "sg_sq.gradient",
              "var.gradient")


def get_config() -> ml_collections.ConfigDict:
  c = defaults.load("cifar10_fast")  # Data, model, recipe.
  c.train.log_every = 100

  c.explain.estimators = ESTIMATORS
  c.explain.transforms = (("gradient", "signed"),)
  c.explain.num_samples = 8
  c.explain.noise_scale = 0.15
  c.explain.batch_size = 200  # Divides shard_size (and 8 devices).
  c.explain.shard_size = 5000

  c.roar.thresholds = (0.9,)
  c.roar.modes = ("roar",)
  c.roar.num_seeds = 3
  c.roar.fill = ("channel_mean", "noisy_linear")
  # Written once: the noisy linear imputation is solved once per image, not
  # in every epoch of every seed.
  c.roar.degrade = "write"

  c.metrics.num_images = 500
  c.metrics.imputation = "cg"
  c.metrics.leakage_steps = 100
  return c
