"""`explain`, `explain_all`: saliency maps of a batch, shared work done once.

The arguments are checked here, each in one line that names what is wrong;
`plan.py` says how the maps are computed and `layout.py` how a batch sharded
over devices is split. Host passes that estimators declare (superpixels) run
once per batch before the jitted calls.
"""

import dataclasses
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from roar_jax.saliency import estimators  # pylint: disable=unused-import
from roar_jax.saliency import inputs as inputs_lib
from roar_jax.saliency import layout as layout_lib
from roar_jax.saliency import deeplift  # pylint: disable=unused-import
from roar_jax.saliency import perturbation  # pylint: disable=unused-import
from roar_jax.saliency import surrogate  # pylint: disable=unused-import
from roar_jax.saliency import xrai  # pylint: disable=unused-import
from roar_jax.saliency import model as model_lib
from roar_jax.saliency import options as options_lib
from roar_jax.saliency import plan as plan_lib
from roar_jax.saliency import registry

Array = jax.Array


def _as_int_rows(value, name: str, batch: int):
  shape = getattr(value, "shape", None)
  if shape is None:
    value = np.asarray(value)
    shape = value.shape
  dtype = getattr(value, "dtype", None)
  if tuple(shape) != (batch,) or not jnp.issubdtype(dtype, jnp.integer):
    raise ValueError(f"{name} must be an integer array of shape ({batch},) "
                     f"(one per image), got {dtype} {tuple(shape)}")
  return value


def _image_shape(images) -> tuple[int, ...]:
  shape = tuple(getattr(images, "shape", np.shape(images)))
  if len(shape) != 4 or not all(shape):
    raise ValueError(f"images must be [B, H, W, C] with B, H, W, C > 0, got "
                     f"shape {shape}")
  if not jnp.issubdtype(getattr(images, "dtype", np.float32), jnp.floating):
    raise ValueError("images must be floating point (in the model's input "
                     f"space), got {images.dtype}")
  return shape


def _check_baseline(baseline, shape) -> None:
  """One image (broadcast to every image) or one per image [B, H, W, C]."""
  bshape = tuple(np.shape(baseline))
  try:
    if len(bshape) == 4 and bshape[0] not in (1, shape[0]):
      raise ValueError
    np.broadcast_shapes(bshape, shape)
    if len(bshape) > 4:
      raise ValueError
  except ValueError:
    raise ValueError(f"baseline of shape {bshape} broadcasts neither to an "
                     f"image {shape[1:]} nor to the batch {shape}") from None


def _check_arrays(arrays: dict, shape, plan: plan_lib.Plan) -> None:
  if "baseline" in arrays:
    _check_baseline(arrays["baseline"], shape)
  readers = [m for m in plan.plain + tuple(b for b, _ in plan.ensembles)
             if registry.reads_references(m)]
  if readers and "references" not in arrays:
    raise ValueError(f"references: {readers} average over references; pass "
                     "references=[R, H, W, C] (e.g. 16 training images in "
                     "the model's input space)")
  if "references" in arrays:
    rshape = tuple(np.shape(arrays["references"]))
    if len(rshape) != 4 or rshape[1:] != shape[1:] or not rshape[0]:
      raise ValueError(f"references must be [R, H, W, C] = [R, "
                       f"{', '.join(map(str, shape[1:]))}] with R >= 1, got "
                       f"shape {rshape}")
  if "segments" in arrays:
    sshape = tuple(np.shape(arrays["segments"]))
    if sshape not in (shape[1:3], shape[:3]) or not jnp.issubdtype(
        np.asarray(arrays["segments"]).dtype, jnp.integer):
      raise ValueError(f"segments must be integer labels [H, W] or [B, H, W]"
                       f" = {list(shape[:3])}, got shape {sshape}")
  window, _ = plan.options.occlusion_geometry(shape[1], shape[2])
  if "occlusion" in plan.plain and window > min(shape[1], shape[2]):
    raise ValueError(f"occlusion_window={window} is larger than the image "
                     f"({shape[1]}x{shape[2]})")


def _host_extras(plan: plan_lib.Plan, images, arrays, batch, layout):
  """Runs the plan's host prepare functions once: {name: [B, ...] array}."""
  per_image = {k: v for k, v in arrays.items()
               if (k == "baseline" and np.ndim(v) == 4 and
                   np.shape(v)[0] == batch) or (k == "segments" and
                                                np.ndim(v) == 3)}
  extras = {}
  for prepare in plan.prepares():
    def rows_fn(rows, rows_slice, prepare=prepare):
      sliced = {k: np.asarray(v)[rows_slice] if k in per_image else v
                for k, v in arrays.items()}
      return prepare(rows, plan.options, sliced)
    extras.update(layout_lib.host_map(rows_fn, images, layout))
  return extras


def _extras_shapes(plan: plan_lib.Plan, image_shape) -> dict:
  """The shapes of one image's host extras (for `gradient_passes`)."""
  extras = {}
  for prepare in plan.prepares():
    for name, (shape, dtype) in prepare.shapes(plan.options,
                                               image_shape).items():
      extras[name] = jax.ShapeDtypeStruct((1, *shape), dtype)
  return extras


def _declared(opts: options_lib.Options, model: model_lib.Model
              ) -> options_lib.Options:
  """The options with the model's normalization unless the call declares
  one: one declaration serves both SLIC and the default baseline."""
  if opts.declares_normalization():
    return opts
  return dataclasses.replace(opts, pixel_mean=model.pixel_mean,
                             pixel_std=model.pixel_std)


def _with_baseline(arrays: dict, opts: options_lib.Options, methods,
                   shape) -> dict:
  """`arrays` with the default baseline, the declared normalization's black
  image. Without a declaration a method that reads a baseline is an error:
  0 in the input space is the mean colour, not black, and a silently
  different baseline changes every map."""
  if "baseline" in arrays:
    return arrays
  if opts.declares_normalization():
    black = options_lib.black_image(opts.pixel_mean, opts.pixel_std)
    if black.shape[0] not in (1, shape[-1]):
      raise ValueError(f"pixel_mean/pixel_std: {black.shape[0]} channels "
                       f"declared for images with {shape[-1]} channels")
    return {**arrays, "baseline": black}
  readers = [m for m in methods if registry.parse(m)[1].baseline]
  if readers:
    raise ValueError(
        f"baseline: {readers} start from a baseline and neither the call nor "
        "the model declares the normalization; pass baseline= (an image in "
        "the model's input space, e.g. saliency.black_image(mean, std)) or "
        "declare pixel_mean=/pixel_std= (saliency.explainable(..., "
        "pixel_mean=, pixel_std=) or as options)")
  return arrays


def _key_for(key, plan: plan_lib.Plan, methods):
  """The run's key; a fixed one when no method draws random numbers."""
  if key is not None:
    return key
  if plan.random():
    raise ValueError(f"key: methods {list(methods)} draw random numbers; "
                     "pass key=jax.random.key(seed)")
  return jax.random.key(0)


def _method_names(methods, model) -> tuple[str, ...]:
  if isinstance(methods, str):
    methods = (methods,)
  methods = tuple(dict.fromkeys(methods))
  if not methods:
    raise ValueError("methods is empty; known: "
                     f"{registry.available_methods()}")
  if not isinstance(model, model_lib.Model):
    raise ValueError("model must be a saliency.Model (see "
                     f"saliency.explainable), got {type(model).__name__}")
  return methods


def explain_all(model: model_lib.Model, images, *, methods: Sequence[str],
                key: Optional[Array] = None, target=None, indices=None,
                **options) -> dict[str, Array]:
  """Maps of several methods for a batch of images, shared work done once.

  Args:
    model: a `saliency.Model` (e.g. from `saliency.explainable`).
    images: [B, H, W, C] float, in the model's input space; a jax.Array
      sharded over a mesh axis gives maps sharded the same way.
    methods: method names (see `available_methods()`), e.g. ('gradient',
      'sg.gradient', 'sg_sq.gradient', 'var.gradient', 'random', 'lime').
    key: PRNG key of the run (noise of the ensembles, the random control,
      RISE's masks, LIME's and KernelSHAP's samples); needed only when a
      method draws random numbers.
    target: None explains each image's predicted class (argmax of the
      logits); an int array [B] names the classes.
    indices: int array [B], each image's index in its split (default 0..B-1).
      Image i's randomness derives from fold_in(key, indices[i]) alone.
    **options: the fields of `options.Options` (num_samples, noise_scale,
      ig_steps, chunk_size, evaluations_per_step, fast_pooling, the lecture
      methods' sample counts, window, cells, segments, kernel width, the
      normalization pixel_mean/pixel_std, by default the model's) and the
      arrays: `baseline` (one image broadcast to all, or one per image
      [B, H, W, C]) of integrated_gradients, deeplift, occlusion, rise, lime,
      kernel_shap: by default the black image of the declared normalization
      (`black_image`), required when none is declared; `references`
      [R, H, W, C] of deepshap and expected_gradients; `segments` (int
      labels [H, W] or [B, H, W]) of lime and kernel_shap instead of SLIC.

  Returns:
    {method: float32 maps shaped like `images`}.

  Raises:
    ValueError: an unknown method or option, a Model without a part a method
      needs, inputs of the wrong shape, a missing key or baseline.
  """
  methods = _method_names(methods, model)
  opts, arrays = options_lib.from_kwargs(options)
  plan = plan_lib.make_plan(methods, _declared(opts, model), target is None,
                            model)
  shape = _image_shape(images)
  _check_arrays(arrays, shape, plan)
  key = _key_for(key, plan, methods)
  # Last: a wrong option or shape is named before a missing baseline.
  arrays = _with_baseline(arrays, plan.options, methods, shape)
  layout = layout_lib.layout_of(images)
  batch = shape[0]
  if batch % layout.shards:
    raise ValueError(f"images: batch {batch} is not divisible by the "
                     f"{layout.shards} shards of its batch axis")
  indices = (np.arange(batch, dtype=np.int32) if indices is None else
             _as_int_rows(indices, "indices", batch))
  # Without a target, the indices stand in: one call signature; the plan
  # computes the predictions instead.
  targets = indices if target is None else _as_int_rows(target, "target",
                                                         batch)
  extras = _host_extras(plan, images, arrays, batch, layout)
  return _run(plan, model, images, targets, indices, key, arrays, extras,
              layout, methods)


def _run(plan, model, images, targets, indices, key, arrays, extras, layout,
         methods):
  """The chunk loop: plain methods, then the noise ensembles' sample groups."""
  opts, shape = plan.options, images.shape
  rows = shape[0] // layout.shards
  chunk, group = plan_lib.step_sizes(plan, rows)
  num_chunks = -(-rows // chunk)
  prepare = layout_lib.prepare_fn(layout, num_chunks * chunk)
  as_int = lambda a: a.astype(jnp.int32) if isinstance(a, jax.Array) else (
      np.asarray(a, np.int32))
  put = lambda a: prepare(layout_lib.batched(a, layout))
  images_p = put(images).astype(jnp.float32)
  targets_p, indices_p = put(as_int(targets)), put(as_int(indices))
  baseline = arrays.get("baseline", 0.0)
  if (isinstance(baseline, jax.Array) and baseline.shape == shape and
      layout.mesh is not None):
    baseline_p = prepare(layout_lib.batched(baseline, layout))
  else:
    baseline_p = prepare(layout_lib.broadcast_fn(layout, tuple(shape))(
        np.asarray(baseline, np.float32)))
  extras_p = {k: prepare(v) for k, v in extras.items()}
  shared = {k: jnp.asarray(arrays[k], jnp.float32)
            for k in ("references",) if k in arrays}
  key, impl = layout_lib.key_parts(key)
  model, key, shared = layout_lib.replicated((model, key, shared), layout)
  plain = plan_lib.plain_fn(plan, impl, layout, chunk)
  num_groups = opts.num_samples // group
  noisy = plan_lib.noisy_fn(plan, impl, layout, chunk, group, num_groups == 1)
  chunks = []
  for s in range(num_chunks):
    s = np.int32(s)
    chunk_targets, maps = plain(model, images_p, targets_p, indices_p, key,
                                baseline_p, extras_p, shared, s)
    if plan.ensembles:
      stats = None
      for k in range(num_groups):
        new = noisy(model, images_p, chunk_targets, indices_p, key,
                    baseline_p, shared, s, np.int32(k * group))
        stats = new if stats is None else plan_lib.combine_fn(layout)(
            stats, new, np.float32(k * group), np.float32(group))
      maps.update(stats if num_groups == 1 else
                  plan_lib.finalize_fn(plan, layout)(stats))
    chunks.append(maps)
  assemble = layout_lib.assemble_fn(layout, chunk, rows)
  return {m: assemble([c[m] for c in chunks]) for m in methods}


def gradient_passes(model: model_lib.Model, methods: Sequence[str],
                    image_shape: Sequence[int], **options) -> int:
  """Model passes per image that `explain_all(methods=...)` runs.

  Counted, not declared: one image's computations are traced (nothing runs)
  and every model evaluation they make is counted, so work that methods
  share counts once: the sg./sg_sq./var. ensembles of one base draw the same
  J noisy evaluations, `gradient_x_input` reuses `gradient`. A gradient pass
  (forward + backward) counts one; so does a forward-only evaluation of a
  perturbation method (occlusion, RISE, LIME, KernelSHAP: about a third of
  the cost of a gradient pass); DeepLIFT's pass over the image and its
  reference counts two. The forward pass that predicts the explained class
  is not counted.

  Args:
    model: a `saliency.Model`.
    methods: method names, as `explain_all` takes them.
    image_shape: (H, W, C) of one image in the model's input space.
    **options: as `explain_all` (num_samples, ig_steps, ...); array options
      are read for their shapes only.

  Returns:
    Passes per explained image.
  """
  if isinstance(methods, str):
    methods = (methods,)
  opts, arrays = options_lib.from_kwargs(options)
  plan = plan_lib.make_plan(tuple(dict.fromkeys(methods)), opts, True, model)
  image = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  row = jax.ShapeDtypeStruct((1,), jnp.int32)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)  # A raw key: impl None.
  baseline = image
  extras = _extras_shapes(plan, tuple(image_shape))
  shared = {k: jax.ShapeDtypeStruct(np.shape(arrays[k]), jnp.float32)
            for k in ("references",) if k in arrays}
  if "references" not in shared:
    shared = {"references": jax.ShapeDtypeStruct((1, *image_shape),
                                                 jnp.float32)}
  with inputs_lib.counting_passes() as plain:
    jax.eval_shape(functools.partial(plan_lib.plain_rows, plan, None, model),
                   image, row, row, key, baseline, extras, shared)
  with inputs_lib.counting_passes() as noisy:
    if plan.ensembles:  # One noise sample; every sample costs the same.
      jax.eval_shape(functools.partial(plan_lib.noisy_rows, plan, None, 1,
                                       True, model),
                     image, row, row, key, baseline, shared,
                     jax.ShapeDtypeStruct((), jnp.int32))
  return int(round(plain[0] + opts.num_samples * noisy[0]))


def explain(model: model_lib.Model, images, *, method: str,
            key: Optional[Array] = None, target=None, indices=None,
            **options) -> Array:
  """Maps of one method: `explain_all(..., methods=(method,))[method]`.

  Args:
    model: a `saliency.Model`.
    images: [B, H, W, C] float, in the model's input space.
    method: a method name (see `available_methods()`).
    key: PRNG key of the run (needed only by methods that draw random
      numbers).
    target: None (predicted class) or an int array [B].
    indices: int array [B], the images' indices in their split.
    **options: see `explain_all`.

  Returns:
    float32 maps shaped like `images`.
  """
  return explain_all(model, images, methods=(method,), key=key, target=target,
                     indices=indices, **options)[method]


def available_methods() -> list[str]:
  """Every method name `explain` accepts, ensembles included."""
  return registry.available_methods()


register = registry.register
