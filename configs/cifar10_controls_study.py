r"""The CIFAR-10 study's ROAR-90% cells beside smoothness-matched controls.

  python -m roar_jax.main --config=configs/cifar10_controls_study.py \
      --workdir=/tmp/cifar10_controls --mode=roar

configs/cifar10_small_study.py (same data, model and recipe) found the SG-SQ and
VarGrad ensembles below random at ROAR 90% mostly under ROAD's noisy linear
fill, where a spatially smooth ranking beats iid random without knowing the
model. This grid asks whether those wins survive a control that differs from
each estimator only in the information it carries: `random_smooth.<e>`, iid
noise blurred to <e>'s spatial autocorrelation on the test split. Estimators:
random, sobel, gradient (signed, as the paper's Table 2), SG-SQ and VarGrad
of the gradient, and the matched control of each of the four; ROAR at 90%;
both fills; 5 seeds (the study's 3 could detect only differences above about
3.5 points): 9 x 2 x 5 = 90 retrains. The report judges each estimator
against random and against its matched control, with Holm-corrected p, the
per-image bootstrap interval and the detectable difference.
"""

import ml_collections

from roar_jax.config import defaults

BASE = ("random", "sobel", "gradient", "sg_sq.gradient", "var.gradient")
ESTIMATORS = BASE + tuple(f"random_smooth.{e}" for e in BASE[1:])


def get_config() -> ml_collections.ConfigDict:
  c = defaults.load("cifar10_small_study")  # Data, model, recipe: as the study.
  c.explain.estimators = ESTIMATORS
  c.explain.transforms = (("gradient", "signed"),)
  c.roar.thresholds = (0.9,)
  c.roar.modes = ("roar",)
  c.roar.num_seeds = 5
  return c
