"""Shared pieces of the experiment configs in configs/.

Configs are Python files whose `get_config()` returns an
`ml_collections.ConfigDict`; the fields every experiment has are set here, and
derived values (learning rate from batch size, steps from epochs) are computed
by the helpers below so that each config states only what it changes.
"""

import importlib.util
import os

import ml_collections

from roar_jax import hints

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CONFIGS_DIR = os.path.join(REPO_ROOT, "configs")
SHARED_DATA = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data")

# The original ROAR code normalizes every dataset with these ImageNet
# statistics (images in [0, 1]), whatever the dataset.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def base_config() -> ml_collections.ConfigDict:
  """Every field the stages read, with defaults; configs override them.

  This is the one place that holds a default: code reads the fields as they
  are, and `validation.py` checks them at start-up.
  """
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = ml_collections.ConfigDict({"name": "small_cnn"})
  _data_defaults(c)
  _train_defaults(c)
  _explain_defaults(c)
  _roar_defaults(c)
  _grid_defaults(c)
  _metrics_defaults(c)
  _finetune_defaults(c)
  return c


def _data_defaults(c: ml_collections.ConfigDict):
  c.data = ml_collections.ConfigDict()
  c.data.name = "toy"
  c.data.path = ml_collections.FieldReference(None, field_type=str)
  c.data.data_dir = ml_collections.FieldReference(None, field_type=str)
  c.data.manual_dir = ml_collections.FieldReference(None, field_type=str)
  c.data.image_size = 32
  c.data.augment = "none"
  c.data.eval_resize = ml_collections.FieldReference(None, field_type=int)
  c.data.mean = (0.5, 0.5, 0.5)
  c.data.std = (0.25, 0.25, 0.25)
  c.data.num_train = ml_collections.FieldReference(None, field_type=int)
  c.data.num_test = ml_collections.FieldReference(None, field_type=int)
  c.data.shuffle_buffer = 10_000
  c.data.crop_padding = "reflect"  # Of 'crop_flip': 'reflect' or 'zero'.
  c.data.crop_pixels = 4  # Of 'crop_flip': the largest shift, in pixels.
  # Keep the decoded training split in memory: None decides by its size.
  c.data.cache = ml_collections.FieldReference(None, field_type=bool)


def _train_defaults(c: ml_collections.ConfigDict):
  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 128
  c.train.eval_batch_size = 256
  c.train.num_steps = 1000
  c.train.optimizer = "sgd"
  c.train.learning_rate = 0.1
  c.train.momentum = 0.9
  c.train.nesterov = False
  c.train.weight_decay = 0.0
  c.train.label_smoothing = 0.0
  c.train.schedule = "constant"
  c.train.warmup_steps = 0
  c.train.decay_steps = ()
  c.train.decay_factor = 0.1
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  c.train.eval_train = False


def _explain_defaults(c: ml_collections.ConfigDict):
  # The explain stage: which estimators rank the pixels, and how.
  c.explain = ml_collections.ConfigDict()
  c.explain.estimators = ("gradient", "random")
  c.explain.num_samples = 15  # J of SmoothGrad / SG-SQ / VarGrad (the paper).
  c.explain.noise_scale = 0.15
  c.explain.ig_steps = 25
  # Images per vectorized step; 0 = automatic (bounded by the number of model
  # evaluations one step may hold).
  c.explain.chunk_size = 0
  c.explain.granularity = "pixel"  # 'value' = the original code's ranking.
  c.explain.transform = "abs"  # Of every estimator, unless:
  # Per-estimator transforms, ((estimator, transform), ...), e.g.
  # (("gradient", "signed"),). `sq.<estimator>` always ranks by the square.
  c.explain.transforms = ()
  c.explain.batch_size = 256
  c.explain.shard_size = 4096  # Images per rank-store shard.
  c.explain.num_visualize = 8
  # Options of the lecture's methods, e.g. --config.explain.methods.
  # rise_masks=1000: `saliency.Options` holds their defaults, read from there.
  c.explain.methods = _method_options()
  c.explain.num_references = 16  # DeepSHAP: training images as references.
  # Pixels of the Gaussian of the smoothness controls: `random_smooth` (iid
  # noise blurred by it) and `blur.<estimator>` (scores blurred by it).
  # `random_smooth.<estimator>` finds its own sigma (docs/design.md).
  c.explain.smooth_sigma = 3.0
  # Maps computed elsewhere: a folder of <method>/<split>.npy (or .npz with
  # `maps` and `index`), ranked in place of the model's for the estimators
  # that name a method there (benchmark/roar/external_maps.py). A folder
  # named like a built-in method needs maps_replace=True.
  c.explain.maps = ""
  c.explain.maps_replace = False


def _method_options() -> ml_collections.ConfigDict:
  """The lecture methods' options with `saliency.Options`'s defaults (an
  unset one, None, takes an int: a window or a stride)."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from roar_jax.saliency import options  # pylint: disable=g-import-not-at-top
  skip = ("num_samples", "noise_scale", "ig_steps", "chunk_size",
          "pixel_mean", "pixel_std", "smooth_sigma")
  return ml_collections.ConfigDict({
      f.name: (ml_collections.FieldReference(None, field_type=int)
               if f.default is None else f.default)
      for f in dataclasses.fields(options.Options) if f.name not in skip})


def _roar_defaults(c: ml_collections.ConfigDict):
  # The retraining grid.
  c.roar = ml_collections.ConfigDict()
  c.roar.thresholds = (0.1, 0.3, 0.5, 0.7, 0.9)
  c.roar.modes = ("roar", "kar")
  c.roar.num_seeds = 5
  # 'channel_mean' or 'noisy_linear' (ROAD), or a tuple of both: the fill is
  # then a grid axis, every unit runs under each, and the report sets the
  # fills side by side.
  c.roar.fill = ml_collections.FieldReference("channel_mean",
                                              field_type=object)
  c.roar.fill_value = ()  # Pinned fill in [0, 255] pixel units, else computed.
  c.roar.degrade = "on_the_fly"  # or 'write': TFRecord datasets first.
  # 'estimator/mode/threshold/seed[/fill]': run that unit alone (the fill
  # may be left out when the grid has one).
  c.roar.unit = ""
  # Units trained together in one program (training/batched.py) by the
  # local loop; 1: one at a time. Not a result field (not in the config
  # hash): a unit trained in a group matches it alone to float rounding.
  c.roar.batch_units = 1


def _grid_defaults(c: ml_collections.ConfigDict):
  # Where the retraining units run. 'sequential': one after the other in this
  # process; 'ray': each as a task on a Ray cluster (benchmark/roar/ray_executor.py).
  # None of these fields changes a result (not part of the config hash).
  c.grid = ml_collections.ConfigDict()
  c.grid.executor = "sequential"
  # The Ray cluster: '' means 'auto' (RAY_ADDRESS, or the cluster `ray start`
  # runs on this machine); or 'ray://head:10001'.
  c.grid.ray_address = ""
  # What one unit's task asks of the cluster: CPUs, GPUs, and custom resources
  # such as one TPU host, e.g. --config.grid.ray_resources="{'TPU': 4}".
  c.grid.ray_num_cpus = 1.0
  c.grid.ray_num_gpus = 0.0
  c.grid.ray_resources = ml_collections.ConfigDict()
  # A failed task (an exception, or a lost worker) runs again this many times;
  # it resumes its unit from the unit's checkpoints.
  c.grid.ray_max_retries = 3
  # Environment variables of every task (e.g. XLA_PYTHON_CLIENT_MEM_FRACTION).
  c.grid.ray_env_vars = ml_collections.ConfigDict()


def _metrics_defaults(c: ml_collections.ConfigDict):
  # ---- No-retrain metrics (benchmark/roar/metrics.py, leakage.py) ----
  c.metrics = ml_collections.ConfigDict()
  # --mode=roar computes them too (--mode=metrics always does).
  c.metrics.with_roar = True
  # Which curves: any of 'deletion', 'insertion', 'road_morf', 'road_lerf'.
  c.metrics.names = ("deletion", "insertion", "road_morf", "road_lerf")
  c.metrics.steps = 20  # Deletion / insertion: K steps, 0%, 5%, ..., 100%.
  c.metrics.fill = "channel_mean"  # Deletion fill: or 'black', 'blur'.
  c.metrics.insertion_start = "fill"  # or 'blur' (RISE's blurred start).
  c.metrics.blur_sigma = 5.0  # Pixels, for 'blur'.
  c.metrics.road_thresholds = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
  c.metrics.noise_std = 0.01  # ROAD's noise, [0, 1] pixel units.
  c.metrics.num_images = 0  # Test images scored; 0 = the whole test split.
  c.metrics.batch_size = 512  # Model inputs per jitted call (all steps).
  # ROAD's solver: 'auto' (banded on a CPU, cg on an accelerator), 'banded'
  # or 'scipy' (host), 'cg' (JAX, on device).
  c.metrics.imputation = "auto"
  c.metrics.precision = "float64"  # Of 'cg'; 'float32' on TPUs.
  # Infidelity (Yeh et al. 2019, as Captum): perturbations per image, the
  # Gaussian perturbation's std (model input units), Captum's `normalize`.
  c.metrics.infidelity_samples = 10
  c.metrics.infidelity_noise_std = 0.2
  c.metrics.infidelity_normalize = False
  # Sensitivity-max / -avg (Captum): samples, uniform radius (input units).
  c.metrics.sensitivity_samples = 10
  c.metrics.sensitivity_radius = 0.02
  # Faithfulness correlation (Bhatt et al. 2020, as Quantus): runs, subset
  # size in values (0: the image's side), baseline 'black' or 'mean'.
  c.metrics.faithfulness_runs = 100
  c.metrics.faithfulness_subset = 0
  c.metrics.faithfulness_baseline = "black"
  c.metrics.leakage = True  # The mask-leakage probe, per grid dataset.
  c.metrics.leakage_steps = 0  # 0 = train.num_steps // 4.
  # Classifiers per probe (own seeds): their mean and 95% interval.
  c.metrics.leakage_seeds = 3


def _finetune_defaults(c: ml_collections.ConfigDict):
  # ---- Fine-tune-once fidelity (benchmark/roar/finetune_fidelity.py) ----
  c.finetune = ml_collections.ConfigDict()
  # The metrics stage fine-tunes the base model once on randomly masked
  # images and scores the estimators on it (--mode=finetune_fidelity: on).
  c.finetune.enabled = False
  c.finetune.steps = 0  # 0 = train.num_steps // 4 (schedule compressed).
  c.finetune.learning_rate_scale = 1.0  # Times train.learning_rate.
  c.finetune.fraction_range = (0.0, 1.0)  # Masked fraction ~ U(low, high).
  c.finetune.draws = 0  # Masks per training image; 0 = one per image seen.
  c.finetune.seed = 0
  c.finetune.metrics = ("deletion",)  # Scored on the fine-tuned model.


# The estimators of the ROAR paper's Table 2: three base methods, their
# SmoothGrad, SmoothGrad-squared and VarGrad ensembles, and the two controls.
PAPER_ESTIMATORS = (
    "random", "sobel",
    "gradient", "integrated_gradients", "guided_backprop",
    "sg.gradient", "sg.integrated_gradients", "sg.guided_backprop",
    "sg_sq.gradient", "sg_sq.integrated_gradients", "sg_sq.guided_backprop",
    "var.gradient", "var.integrated_gradients", "var.guided_backprop",
)


# Table 2's GRAD, IG, GB and SG rows were ranked by the signed value (largest
# positive first); ranking by magnitude is the paper's separate "squared"
# experiment (supplement 6.4, Fig. 6: SQ-GB beats GB by 8.43 +- 0.97 points at
# t = 0.9), run here as the `sq.*` estimators. SG-SQ and VAR maps are
# non-negative: every transform ranks them alike.
PAPER_SIGNED = ("gradient", "integrated_gradients", "guided_backprop",
                "sg.gradient", "sg.integrated_gradients", "sg.guided_backprop")
PAPER_SQUARED = ("sq.gradient", "sq.integrated_gradients",
                 "sq.guided_backprop")


def paper_grid(c: ml_collections.ConfigDict, *, pin_imagenet_fill: bool):
  """The ROAR paper's benchmark settings, written into `c.explain`/`c.roar`.

  Every value of the H x W x 3 map is ranked on its own (granularity 'value',
  as the released code does); Table 2's GRAD, IG, GB and SG rows by the
  signed value, the squared rows of Fig. 6 (`sq.*`) and every other
  estimator by magnitude; 15 noise samples of scale 0.15 for the ensembles,
  25 IG steps from a black image; thresholds 10-90%, ROAR and KAR, 5 retrains
  each.

  Args:
    c: the config to change.
    pin_imagenet_fill: fill removed values with the ImageNet mean (the
      original code's constant for every dataset) instead of computing the
      training split's mean.
  """
  c.explain.estimators = PAPER_ESTIMATORS + PAPER_SQUARED
  c.explain.granularity = "value"
  c.explain.transform = "abs"
  c.explain.transforms = tuple((e, "signed") for e in PAPER_SIGNED)
  c.explain.num_samples = 15
  c.explain.noise_scale = 0.15
  c.explain.ig_steps = 25
  c.roar.thresholds = (0.1, 0.3, 0.5, 0.7, 0.9)
  c.roar.modes = ("roar", "kar")
  c.roar.num_seeds = 5
  if pin_imagenet_fill:
    c.roar.fill_value = tuple(255.0 * m for m in IMAGENET_MEAN)


def load(name_or_path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file, as `--config=` loads it.

  Args:
    name_or_path: a path to a config file, or the name of one in configs/
      (e.g. 'toy').

  Returns:
    The ConfigDict.
  """
  path = config_path(name_or_path)
  spec = importlib.util.spec_from_file_location(
      "config_" + os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def config_path(name_or_path: str) -> str:
  """The file of a config given by path or by its name in configs/.

  A bare name (no `.py`, no directory, not a file here) is a config of
  configs/, found from any working directory: 'toy' is configs/toy.py.

  Args:
    name_or_path: a path to a config file, or the name of one in configs/.

  Returns:
    The path: `name_or_path` itself unless it is a bare name.

  Raises:
    ValueError: a bare name that configs/ lacks, with the closest one.
  """
  if (name_or_path.endswith(".py") or os.sep in name_or_path
      or os.path.exists(name_or_path)):
    return name_or_path
  path = os.path.join(CONFIGS_DIR, f"{name_or_path}.py")
  if not os.path.isfile(path):
    names = sorted(f[:-3] for f in os.listdir(CONFIGS_DIR)
                   if f.endswith(".py") and not f.startswith("_"))
    raise ValueError(f"no config file {name_or_path!r} here and no config "
                     f"named {name_or_path!r} in {CONFIGS_DIR}"
                     f"{hints.did_you_mean(name_or_path, names)}")
  return path


def shared_path(*parts: str) -> str | None:
  """A path under ../shared/data if this checkout has it, else None."""
  path = os.path.join(SHARED_DATA, *parts)
  return path if os.path.exists(path) else None


def paper_schedule(c: ml_collections.ConfigDict, *, num_train: int,
                   base_lr: float, batch_size: int, num_steps: int):
  """The ROAR paper's ResNet-50 recipe, written into `c.train`.

  Nesterov momentum 0.9, label smoothing 0.1, weight decay 1e-4 on all but
  BatchNorm, learning rate base_lr x batch/256 reached by a linear warm-up over
  5 epochs, then x0.1 at epochs 30, 60 and 80.

  Args:
    c: the config to change.
    num_train: training examples (to turn epochs into steps).
    base_lr: learning rate per 256 images.
    batch_size: global batch size.
    num_steps: training steps.
  """
  steps_per_epoch = num_train / batch_size
  t = c.train
  t.batch_size = batch_size
  t.num_steps = num_steps
  t.optimizer = "sgd"
  t.momentum = 0.9
  t.nesterov = True
  t.label_smoothing = 0.1
  t.weight_decay = 1e-4
  t.learning_rate = base_lr * batch_size / 256
  t.schedule = "step"
  t.warmup_steps = int(round(5 * steps_per_epoch))
  t.decay_steps = tuple(int(round(e * steps_per_epoch)) for e in (30, 60, 80))
  t.decay_factor = 0.1


def paper_resnet50(dataset: str, *, num_train: int, base_lr: float,
                   batch_size: int, num_steps: int, eval_batch_size: int
                   ) -> ml_collections.ConfigDict:
  """A paper experiment: ResNet-50 v1.5 at 224 on `dataset`, the paper's
  recipe (`paper_schedule`) and grid (`paper_grid`, ImageNet-mean fill).

  Inception-style crops for training, resize to 256 and center-crop 224 for
  evaluation; every dataset is normalized with the ImageNet statistics, as
  the original code does.

  Args:
    dataset: `config.data.name` (a TFDS name, or 'birdsnap').
    num_train: training examples (to turn epochs into steps).
    base_lr: learning rate per 256 images.
    batch_size: global batch size.
    num_steps: training steps.
    eval_batch_size: global evaluation batch size.

  Returns:
    The config.
  """
  c = base_config()
  c.model.name = "resnet50"
  c.model.resnet50 = ml_collections.ConfigDict({"stem": "imagenet"})
  c.data.name = dataset
  c.data.image_size = 224
  c.data.augment = "inception"
  c.data.eval_resize = 256
  c.data.mean = IMAGENET_MEAN
  c.data.std = IMAGENET_STD
  paper_schedule(c, num_train=num_train, base_lr=base_lr,
                 batch_size=batch_size, num_steps=num_steps)
  c.train.eval_batch_size = eval_batch_size
  c.train.checkpoint_every = 1000
  c.train.log_every = 100
  paper_grid(c, pin_imagenet_fill=True)
  return c
