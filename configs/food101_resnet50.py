"""Food-101 with ResNet-50 v1.5: the ROAR paper's setting (Hooker et al. 2019).

Batch 256, base learning rate 0.7, 20k steps (about 68 epochs: the epoch-80
decay is never reached), otherwise the ImageNet recipe (see
imagenet_resnet50.py). The paper's unmodified top-1 is 84.54%. TFDS `food101`
(its 'validation' split, 25,250 images, is the test split).

  python -m roar_jax.main --config=configs/food101_resnet50.py \
      --workdir=/tmp/food101 --mode=train
"""

import ml_collections

from roar_jax import config_lib


def get_config() -> ml_collections.ConfigDict:
  c = config_lib.base_config()
  c.model.name = "resnet50"
  c.model.resnet50 = ml_collections.ConfigDict({"stem": "imagenet"})

  c.data.name = "food101"
  c.data.image_size = 224
  c.data.augment = "inception"
  c.data.eval_resize = 256
  c.data.mean = config_lib.IMAGENET_MEAN
  c.data.std = config_lib.IMAGENET_STD

  config_lib.paper_schedule(c, num_train=75_750, base_lr=0.7, batch_size=256,
                            num_steps=20_000)
  c.train.eval_batch_size = 256
  c.train.checkpoint_every = 1000
  c.train.log_every = 100
  return c
