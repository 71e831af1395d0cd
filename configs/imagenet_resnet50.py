"""ImageNet with ResNet-50 v1.5: the ROAR paper's setting (Hooker et al. 2019).

Batch 4096, base learning rate 0.1 (x batch/256 = 1.6), 32k steps (about 102
epochs), Nesterov momentum 0.9, label smoothing 0.1, weight decay 1e-4 on all
but BatchNorm, 5-epoch linear warm-up then x0.1 at epochs 30, 60 and 80;
inception-style random crop + flip at 224 for training, resize 256 + center
crop 224 for evaluation. The paper's unmodified top-1 is 76.68%.

TFDS `imagenet2012` needs the ILSVRC2012 tar files in a manual_dir:

  python -m roar_jax.main --config=configs/imagenet_resnet50.py \
      --config.data.manual_dir=/data/imagenet --workdir=gs://bucket/imagenet \
      --mode=train

With `--mode=roar` it runs the paper's grid (`defaults.paper_grid`: the 14
estimators of Table 2 and the 3 squared ones of Fig. 6, per-value ranking, ImageNet-mean fill, thresholds
10-90%, ROAR and KAR, 5 seeds). Expected (paper, Table 2, mean of 5 retrains,
%; GRAD and IG ranked by the signed value, as the paper's table was: the
`gradient` and `integrated_gradients` rows of this grid), fraction of pixels
removed (ROAR) or kept (KAR):

  estimator    ROAR 10  ROAR 50  ROAR 90  KAR 10  KAR 50  KAR 90
  Random        72.65    69.13    63.53   63.60   69.18   72.69
  GRAD          72.94    70.97    66.75   67.63   72.02   73.46
  IG            73.17    72.03    68.20   70.38   72.66   73.32
  SG-SQ-GRAD    69.35    41.55    11.09   63.25   72.20   73.96
  VAR-GRAD      69.24    39.23    10.41   53.38   72.15   73.92

Cost (derived in launch/README.md from published throughput): one training run
is 32k x 4096 = 131M images, about 18 TPU-v3-chip-hours (15 A100-hours); the
full grid (851 runs: 17 estimators) about 15,300 v3-chip-hours, plus about 53 for explaining
every image with the 12 model-based estimators.
"""

import ml_collections

from roar_jax.config import defaults


def get_config() -> ml_collections.ConfigDict:
  return defaults.paper_resnet50("imagenet2012", num_train=1_281_167,
                                   base_lr=0.1, batch_size=4096,
                                   num_steps=32_000, eval_batch_size=1024)
