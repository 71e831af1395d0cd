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

On a TPU v3-32 (or 8 x A100) one training run takes roughly 6-8 hours.
"""

import ml_collections

from roar_jax import config_lib


def get_config() -> ml_collections.ConfigDict:
  c = config_lib.base_config()
  c.model.name = "resnet50"
  c.model.resnet50 = ml_collections.ConfigDict({"stem": "imagenet"})

  c.data.name = "imagenet2012"
  c.data.image_size = 224
  c.data.augment = "inception"
  c.data.eval_resize = 256
  # The original code normalizes every dataset with the ImageNet statistics.
  c.data.mean = config_lib.IMAGENET_MEAN
  c.data.std = config_lib.IMAGENET_STD

  config_lib.paper_schedule(c, num_train=1_281_167, base_lr=0.1,
                            batch_size=4096, num_steps=32_000)
  c.train.eval_batch_size = 1024
  c.train.checkpoint_every = 1000
  c.train.log_every = 100
  return c
