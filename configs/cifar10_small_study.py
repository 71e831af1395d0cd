r"""A CIFAR-10 ROAR/KAR study that 2 CPU cores run in about an hour.

  python -m roar_jax.main --config=configs/cifar10_small_study.py \
      --workdir=/tmp/cifar10_small_study --mode=roar

The grid: the ROAR paper's estimators that matter (the controls random and
sobel; gradient, guided backprop and integrated gradients, ranked by the
signed value as the paper's Table 2 rows were; their SmoothGrad-squared and
VarGrad ensembles), ROAR and KAR at 50% and 90%, 3 seeds, under both fills
of the removed pixels: the training split's channel mean (the paper's) and
ROAD's noisy linear imputation (Rong et al. 2022), which hides the mask's
shape. 11 estimators x 2 modes x 2 thresholds x 2 fills x 3 seeds = 264
retrains, each from scratch, beside the no-retrain metrics and the
mask-leakage probe. One run took 92 min on 2 cores shared with other jobs
(the retrains: 58 min, 13 s each). The report (W/report/) sets the fills
side by side, with every estimator's verdict against random under each.

To fit an hour, everything is small: the small CNN (width 16) on the first
5,000 training and 1,000 test images; 200 Adam steps at batch 64 (about 2.5
epochs) for the base model and for every retrain (the protocol retrains with
the base model's recipe); SmoothGrad-squared/VarGrad with 8 noise samples
and IG with 8 steps (the paper: 15 and 25); per-pixel ranking; the no-retrain
metrics on 200 test images; leakage probes of 50 steps.
docs/results/cifar10_small_study/ holds the report of a run and what it does and
does not reproduce.

Data: ../shared/data/cifar10-jpeg.tar.gz when this checkout has it, else TFDS
`cifar10`.
"""

import ml_collections

from roar_jax.config import defaults

ESTIMATORS = (
    "random", "sobel",
    "gradient", "guided_backprop", "integrated_gradients",
    "sg_sq.gradient", "sg_sq.guided_backprop", "sg_sq.integrated_gradients",
    "var.gradient", "var.guided_backprop", "var.integrated_gradients",
)


def get_config() -> ml_collections.ConfigDict:
  c = defaults.load("cifar10")  # configs/cifar10.py: this config extends it.
  c.model.name = "small_cnn"
  c.model.small_cnn = ml_collections.ConfigDict({"width": 16})

  c.data.path = defaults.shared_path("cifar10-jpeg.tar.gz")
  c.data.num_train = 5_000
  c.data.num_test = 1_000

  c.train.batch_size = 64
  c.train.eval_batch_size = 400
  c.train.num_steps = 200
  c.train.optimizer = "adam"
  c.train.learning_rate = 2e-3
  c.train.momentum = 0.9
  c.train.weight_decay = 0.0
  c.train.schedule = "cosine"
  c.train.warmup_steps = 10
  c.train.checkpoint_every = 200
  c.train.log_every = 100

  c.explain.estimators = ESTIMATORS
  c.explain.num_samples = 8
  c.explain.ig_steps = 8
  c.explain.batch_size = 200
  c.explain.shard_size = 1000
  # Table 2's base rows were ranked by the signed value; SG-SQ and VarGrad
  # maps are non-negative, so every transform ranks them alike.
  c.explain.transforms = tuple((e, "signed") for e in ESTIMATORS[2:5])

  c.roar.thresholds = (0.5, 0.9)
  c.roar.modes = ("roar", "kar")
  c.roar.num_seeds = 3
  c.roar.fill = ("channel_mean", "noisy_linear")
  # Written once: the noisy linear imputation is solved once per image, not
  # in every epoch of every seed.
  c.roar.degrade = "write"

  c.metrics.num_images = 200
  c.metrics.imputation = "cg"
  c.metrics.leakage_steps = 50
  return c
