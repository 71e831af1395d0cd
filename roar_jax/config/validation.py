"""Start-up validation of a config: fail in one line that names the field.

Everything here runs before any data is read or any model is compiled, so a
typo costs a second, not a crashed job an hour later.
"""

import dataclasses
import importlib.util
import os

import jax

from roar_jax import hints
from roar_jax import levels as levels_lib
from roar_jax import models
from roar_jax import saliency
from roar_jax.benchmark.roar import estimator_names
from roar_jax.benchmark.roar import external_maps
from roar_jax.benchmark.roar import finetune_fidelity_options
from roar_jax.benchmark.roar import metric_plugins
from roar_jax.config import known_fields
# Names only: the validation imports no TensorFlow, so a bad field fails fast.
from roar_jax.data import names as data_names

# The image datasets, and the 16-feature experiment of the ROAR paper.
DATASETS = data_names.KNOWN_DATASETS + ("synthetic_linear",)
MODES = levels_lib.MODES
FILLS = levels_lib.FILLS

ConfigError = known_fields.ConfigError


def _require(ok: bool, message: str):
  if not ok:
    raise ConfigError(message)


def validate(config, mode: str = "train"):
  """Checks the fields that `mode` will use.

  Args:
    config: the experiment ConfigDict.
    mode: the stage about to run.

  Raises:
    ConfigError: naming the first bad field or path.
  """
  known_fields.check(config)
  _require(isinstance(config.data.name, str) and (
      config.data.name in DATASETS or config.data.path),
           f"config.data.name={config.data.name!r} is not a known dataset "
           f"(known: {sorted(DATASETS)}); a dataset of your own needs "
           "--config.data.path= (an ImageFolder folder or .tar.gz, or a "
           "folder of IDX files)")
  if config.data.name == "synthetic_linear":
    _require(mode in ("roar", "report"),
             f"--mode={mode}: the synthetic_linear experiment runs with "
             "--mode=roar (or report)")
    return
  _require(config.model.name in models.MODELS,
           f"config.model.name={config.model.name!r} is not a known model"
           f"{hints.did_you_mean(config.model.name, models.MODELS)}; known: "
           f"{sorted(models.MODELS)}")
  _require(config.data.augment in data_names.AUGMENTATIONS,
           f"config.data.augment={config.data.augment!r}: expected one of "
           f"{list(data_names.AUGMENTATIONS)}")
  tolerance = config.data.get("max_missing_fraction")  # Of Birdsnap.
  _require(tolerance is None or (
      isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool)
      and 0 <= tolerance <= 1),
           f"config.data.max_missing_fraction={tolerance!r} must be a "
           "fraction in [0, 1]")
  for field in ("path", "manual_dir"):
    path = config.data.get(field)
    _require(path is None or os.path.exists(os.path.expanduser(path)),
             f"config.data.{field}: {path} does not exist")
  devices = jax.device_count()
  _validate_train(config, devices)
  _check_statistics(config)
  # Building the model checks its options (config.model.<name>.*).
  try:
    models.get_model(config.model, 2)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _validate_mode(config, mode, devices)


def _validate_mode(config, mode: str, devices: int):
  """The sections `mode` reads beyond the data, model and training."""
  if mode in ("explain", "roar", "report", "metrics", "finetune_fidelity"):
    _validate_benchmark(config, devices)
  if mode in ("roar", "metrics", "finetune_fidelity"):
    _validate_metrics(config, mode)
  if mode == "sanity":
    _require(not external_maps.folder(config),
             f"config.explain.maps: {external_maps.NOT_SUPPORTED}")
    # Deferred: it imports TensorFlow, which a config error must not await.
    from roar_jax.benchmark.sanity import checks as sanity  # pylint: disable=g-import-not-at-top
    try:
      sanity.validate_config(config)
    except ValueError as e:
      raise ConfigError(str(e)) from None


def _validate_train(config, devices: int):
  """Checks `config.train` and the input pipeline's fields."""
  for field in ("batch_size", "eval_batch_size"):
    value = config.train[field]
    _require(isinstance(value, int) and value > 0 and value % devices == 0,
             f"config.train.{field}={value} must be a positive multiple of "
             f"the number of devices ({devices})")
  _require(config.train.num_steps > 0,
           f"config.train.num_steps={config.train.num_steps} must be > 0")
  for field, low in (("log_every", 1), ("checkpoint_every", 0)):
    value = config.train[field]
    _require(isinstance(value, int) and value >= low,
             f"config.train.{field}={value!r} must be an int >= {low}")
  pixels = config.data.get("crop_pixels", 4)
  _require(isinstance(pixels, int) and 0 <= pixels < config.data.image_size,
           f"config.data.crop_pixels={pixels!r} must be an integer in "
           f"[0, image_size={config.data.image_size})")
  _require(isinstance(config.data.shuffle_buffer, int)
           and config.data.shuffle_buffer > 0,
           f"config.data.shuffle_buffer={config.data.shuffle_buffer!r} must "
           "be a positive int")


def _check_distinct_percents(thresholds):
  """Thresholds are stored in whole percents (file names, the rank store's
  100 levels): two that round to one percent would share a result file and
  remove the same pixels. The rounding is pixel removal's."""
  seen = {}
  for t in thresholds:
    percent = levels_lib.threshold_level(t)
    _require(percent not in seen,
             f"config.roar.thresholds: {seen.get(percent)!r} and {t!r} are "
             f"the same threshold in whole percents ({percent}%); each must "
             "be distinct")
    seen[percent] = t


def _validate_benchmark(config, devices: int):
  """Checks `config.explain` and `config.roar`."""
  ec = config.explain
  methods = saliency.available_methods()
  # Maps computed elsewhere name methods of their own (their folders).
  try:
    external = external_maps.methods(config)
    clash = external_maps.clash(config, methods)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _require(clash is None, str(clash))
  methods = (*methods, *external)
  for est in ec.estimators:
    why = estimator_names.problem(est, methods, tuple(ec.estimators))
    _require(why is None, f"config.explain.estimators: {why}")
  sigma = ec.smooth_sigma
  _require(isinstance(sigma, (int, float)) and not isinstance(sigma, bool)
           and 0 < sigma <= 1024,
           f"config.explain.smooth_sigma={sigma!r} must be a number of pixels "
           "in (0, 1024]")
  twice = sorted({e for e in ec.estimators if list(ec.estimators).count(e) > 1})
  _require(not twice, f"config.explain.estimators: {twice} named more than "
           "once")
  _require("oracle" not in ec.estimators or config.data.name == "toy",
           "config.explain.estimators: 'oracle' needs the toy data's "
           "ground-truth masks (config.data.name='toy')")
  _require(ec.granularity in ("pixel", "value"),
           f"config.explain.granularity={ec.granularity!r}: expected 'pixel' "
           "or 'value'")
  _require(ec.transform in ("abs", "square", "signed"),
           f"config.explain.transform={ec.transform!r}: expected 'abs', "
           "'square' or 'signed'")
  for pair in ec.transforms:
    _require(isinstance(pair, (tuple, list)) and len(pair) == 2
             and pair[0] in ec.estimators
             and pair[1] in ("abs", "square", "signed"),
             f"config.explain.transforms: {pair!r} must be (estimator, "
             "transform) with an estimator of config.explain.estimators and "
             "a transform of 'abs', 'square', 'signed'")
  fields = {f.name for f in dataclasses.fields(saliency.Options)}
  for name in ec.methods:
    _require(name in fields and name not in (
        "num_samples", "noise_scale", "ig_steps", "chunk_size"),
             f"config.explain.methods.{name}: not an option of the lecture's "
             f"methods; known: {sorted(fields)}")
  _validate_method_options(config, saliency)
  _require(isinstance(ec.num_references, int) and ec.num_references > 0,
           f"config.explain.num_references={ec.num_references!r} must be a "
           "positive int")
  _require(ec.batch_size > 0 and ec.batch_size % devices == 0,
           f"config.explain.batch_size={ec.batch_size} must be a positive "
           f"multiple of the number of devices ({devices})")
  local = ec.batch_size // jax.process_count()  # What a process explains.
  _require(isinstance(ec.shard_size, int) and ec.shard_size > 0
           and ec.shard_size % local == 0,
           f"config.explain.shard_size={ec.shard_size!r} must be a positive "
           f"multiple of the per-process explain batch ({local}), so that no "
           "batch straddles two rank-store shards")
  _validate_roar(config)


def _validate_method_options(config, saliency):
  """The estimators' options, checked as the explain stage will use them,
  so that a bad value stops the run before the base model trains."""
  ec = config.explain
  top = ("num_samples", "noise_scale", "ig_steps")
  options = {**{k: ec[k] for k in top},
             **{k: v for k, v in ec.methods.items() if v is not None}}
  try:
    saliency.options.from_kwargs(options)
  except ValueError as e:
    text = str(e)
    for name in options:
      field = f"explain.{name}" if name in top else f"explain.methods.{name}"
      text = text.replace(f"saliency option {name}=", f"config.{field}=")
    raise ConfigError(text) from None
  window = ec.methods.get("occlusion_window")
  size = config.data.image_size
  _require(window is None or not isinstance(size, int) or window <= size,
           f"config.explain.methods.occlusion_window={window} is larger than "
           f"the images (config.data.image_size={size})")


def _data_channels(config) -> int | None:
  """The channels of the data's images, where known before reading them."""
  if config.data.path:
    return None
  return data_names.CHANNELS.get(config.data.name)


def _check_statistics(config):
  """`data.mean`/`std`: one value, or one per channel of the images."""
  channels = _data_channels(config)
  for field in ("mean", "std"):
    value = config.data[field]
    values = value if isinstance(value, (tuple, list)) else (value,)
    _require(all(isinstance(v, (int, float)) and not isinstance(v, bool)
                 for v in values) and values,
             f"config.data.{field}={value!r} must be a number or a tuple of "
             "numbers, one per channel")
    _require(channels is None or len(values) in (1, channels),
             f"config.data.{field} has {len(values)} values for "
             f"{config.data.name}'s images with {channels} channel"
             f"{'s' if channels != 1 else ''}")
    _require(field != "std" or all(v > 0 for v in values),
             f"config.data.std={value!r} must be positive")


def _check_fill_value(config):
  """`roar.fill_value`: () or one pixel value in [0, 255] per channel."""
  value = config.roar.fill_value
  if not value:
    return
  channels = _data_channels(config) or (
      len(config.data.mean) if isinstance(config.data.mean, (tuple, list))
      and len(config.data.mean) > 1 else None)
  _require(all(isinstance(v, (int, float)) and not isinstance(v, bool)
               and 0 <= v <= 255 for v in value),
           f"config.roar.fill_value={tuple(value)!r} must hold pixel values in "
           "[0, 255] (not [0, 1])")
  _require(channels is None or len(value) == channels,
           f"config.roar.fill_value has {len(value)} values for images with "
           f"{channels} channel{'s' if channels != 1 else ''}")


def _check_unit_in_grid(config, unit):
  """`roar.unit` names a unit of the grid the config describes: its
  results must belong to this grid's report and fingerprints."""
  rc = config.roar
  percents = {levels_lib.threshold_level(t) for t in rc.thresholds}
  for field, ok, grid_field, grid_values in (
      ("estimator", unit.estimator in config.explain.estimators,
       "explain.estimators", list(config.explain.estimators)),
      ("mode", unit.mode in rc.modes, "roar.modes", list(rc.modes)),
      ("threshold", levels_lib.threshold_level(unit.threshold) in percents,
       "roar.thresholds", list(rc.thresholds)),
      ("seed", 0 <= unit.seed < rc.num_seeds, "roar.num_seeds",
       rc.num_seeds)):
    _require(ok, f"config.roar.unit={rc.unit!r}: {field} "
             f"{getattr(unit, field)!r} is not in the grid (config."
             f"{grid_field}={grid_values})")


def _validate_roar(config):
  """Checks `config.roar` and `config.grid`."""
  rc = config.roar
  for t in rc.thresholds:
    _require(isinstance(t, (int, float)) and 0.0 <= t <= 1.0,
             f"config.roar.thresholds: {t!r} is outside [0, 1] (thresholds "
             "are fractions of the pixels)")
  _check_distinct_percents(rc.thresholds)
  for m in rc.modes:
    _require(m in MODES, f"config.roar.modes: unknown mode {m!r}; known: "
             f"{list(MODES)}")
  _check_fills(rc.fill)
  _check_fill_value(config)
  _require(rc.degrade in ("on_the_fly", "write"),
           f"config.roar.degrade={rc.degrade!r}: expected 'on_the_fly' or "
           "'write'")
  executor = config.grid.executor
  _require(executor in ("sequential", "ray"),
           f"config.grid.executor={executor!r}: expected 'sequential' or "
           "'ray'")
  if executor == "ray":
    _require(importlib.util.find_spec("ray") is not None,
             "config.grid.executor='ray' needs Ray: pip install -e \".[ray]\"")
  _require(rc.num_seeds > 0, f"config.roar.num_seeds={rc.num_seeds} must be "
           "> 0")
  _require(isinstance(rc.batch_units, int) and not isinstance(
      rc.batch_units, bool) and rc.batch_units >= 1,
           f"config.roar.batch_units={rc.batch_units!r} must be an integer "
           ">= 1 (units trained together; 1: one at a time)")
  if rc.unit:
    from roar_jax.benchmark.roar import grid  # pylint: disable=g-import-not-at-top
    try:
      unit = grid.parse_unit(rc.unit, levels_lib.fills_of(rc.fill))
    except ValueError as e:
      raise ConfigError(str(e)) from None
    _require(unit.mode in MODES and 0.0 <= unit.threshold <= 1.0,
             f"config.roar.unit={rc.unit!r}: mode must be one of "
             f"{list(MODES)} and threshold in [0, 1]")
    _check_unit_in_grid(config, unit)


def _check_fills(value):
  """`config.roar.fill`: one known fill, or a tuple of distinct ones."""
  expected = (f"expected one of {list(FILLS)}, or a tuple of them such as "
              f"{FILLS!r}")
  _require(isinstance(value, (str, tuple, list)),
           f"config.roar.fill={value!r}: {expected}")
  fills = levels_lib.fills_of(value)
  _require(fills, f"config.roar.fill=(): {expected}")
  for fill in fills:
    _require(fill in FILLS, f"config.roar.fill={value!r}: unknown fill "
             f"{fill!r}; {expected}")
  repeated = sorted({f for f in fills if fills.count(f) > 1})
  _require(not repeated, f"config.roar.fill={value!r}: {repeated} named more "
           "than once")


def _validate_metrics(config, mode: str):
  """Checks `config.metrics` and `config.finetune` (on in finetune_fidelity)."""
  finetune = (finetune_fidelity_options.switched_on(config)
              if mode == "finetune_fidelity" else config)
  try:
    if config.get("metrics") is not None:
      metric_plugins.options_of(config)
    finetune_fidelity_options.check(finetune)
  except (TypeError, ValueError) as e:
    raise ConfigError(str(e).splitlines()[0]) from None
  if config.get("metrics") is None:
    return
  steps = config.metrics.get("leakage_steps", 0)
  _require(isinstance(steps, int) and steps >= 0,
           f"config.metrics.leakage_steps={steps!r} must be an integer >= 0 "
           "(0: a quarter of config.train.num_steps)")
  seeds = config.metrics.get("leakage_seeds")
  _require(isinstance(seeds, int) and seeds >= 1,
           f"config.metrics.leakage_seeds={seeds!r} must be an integer >= 1")
