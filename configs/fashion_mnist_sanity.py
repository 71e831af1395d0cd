r"""Sanity checks (Adebayo et al. 2018): the paper's CNN and MLP, Fashion-MNIST.

  python -m roar_jax.main --config=configs/fashion_mnist_sanity.py \
      --workdir=/tmp/fm_sanity --mode=sanity

Trains the CNN (conv5x5(32)-pool-conv5x5(64)-pool-fc1024) and the MLP
(2500-1500-500) on the true labels and on permuted labels, then runs the
cascading and independent model randomization tests and the data
randomization test for eight estimators and the random and sobel controls
on 200 test images; the report lands
in <workdir>/report/ (sanity_*.png, sanity.csv, sanity.md).

Reduced defaults, so that it finishes in under 15 minutes on 2 CPU cores:
- true labels: 600 Adam steps at batch 64 (the paper: 20k iterations),
  which gives the CNN about 85% test accuracy;
- random labels: the first 1,000 training images with permuted labels (the
  paper: all of them, 100 epochs), trained until 95% of them are fitted;
- SmoothGrad/VarGrad with 15 noise samples, IG with 25 steps (the paper's
  code: 50 and 50).
For the paper's setting: --config.train.num_steps=20000
--config.sanity.random_labels.num_train=0
--config.sanity.random_labels.max_steps=120000 --config.explain.ig_steps=50
--config.explain.num_samples=50.

Data: ../shared/data/fashion-mnist (IDX files) when this checkout has it,
else TFDS `fashion_mnist`.
"""

import ml_collections

from roar_jax.config import defaults


def get_config() -> ml_collections.ConfigDict:
  c = defaults.load("fashion_mnist")  # This config extends that one.
  c.data.path = defaults.shared_path("fashion-mnist")

  # True-label training, shared by both models (reduced; see the docstring).
  c.train.batch_size = 64
  c.train.num_steps = 600
  c.train.optimizer = "adam"
  c.train.learning_rate = 1e-3
  c.train.checkpoint_every = 300
  c.train.log_every = 100
  c.train.eval_batch_size = 1000

  # Estimator options (SmoothGrad: noise 0.15 of the image's range, as the
  # paper's code; IG baseline: the black image).
  c.explain.num_samples = 15
  c.explain.noise_scale = 0.15
  c.explain.ig_steps = 25

  c.sanity = ml_collections.ConfigDict()
  c.sanity.models = ("sanity_cnn", "sanity_mlp")
  c.sanity.estimators = (
      "gradient", "gradient_x_input", "integrated_gradients",
      "guided_backprop", "gradcam", "guided_gradcam", "sg.gradient",
      "var.gradient")
  # Model-free maps through every test (Binder et al. 2023): what a metric
  # gives for free; the report says which estimators beat them.
  c.sanity.controls = ("random", "sobel")
  c.sanity.tests = ("cascading", "independent", "data")
  c.sanity.num_images = 200
  # Re-initialization: 'original' re-runs each layer's own initializers (the
  # released code's choice); 'truncated_normal' draws N(0, init_std^2) cut
  # at 2 std (the paper's App. B text: std 0.01).
  c.sanity.init = "original"
  c.sanity.init_std = 0.01
  # BatchNorm statistics of a re-initialized layer: reset (the paper's text)
  # or kept (the released code). These two models have no BatchNorm.
  c.sanity.reset_batch_stats = True
  # 'predicted': the top class of the model being explained (the released
  # code); 'label': the true label.
  c.sanity.target = "predicted"
  # The data randomization test compares maps only if the random-label model
  # fits its training labels at least this well (the paper: over 95%).
  c.sanity.min_train_accuracy = 0.95
  c.sanity.random_labels = ml_collections.ConfigDict({
      "num_train": 1000,  # The first N training images; 0: all of them.
      "num_steps": 500,  # Doubled (resuming) until the floor is reached ...
      "max_steps": 2000,  # ... up to this many steps.
      "learning_rate": ml_collections.FieldReference(None, field_type=float),
  })
  c.sanity.similarity = ml_collections.ConfigDict({
      "percentile": 99.0,
      "ssim_win_size": 5,
      "hog_orientations": 9,
      "hog_pixels_per_cell": 4,
      "hog_cells_per_block": 2,
      "hog_correlation": "pearson",
  })
  c.sanity.num_visualize = 1  # Images in the map grids (the paper shows one).
  return c
