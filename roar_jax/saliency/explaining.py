"""`explain`, `explain_all`: saliency maps of a batch, shared work done once.

How a batch is computed:
- The requested methods become a plan: base estimators on the clean images,
  and for each base that has any noise ensemble asked for, ONE evaluation of
  it on J noisy copies of every image, from which SmoothGrad (mean),
  SmoothGrad-squared (mean of squares) and VarGrad (population variance,
  two-pass) are all taken. Base estimators share their gradients too
  (`inputs.Inputs`).
- The batch is cut into fixed-shape chunks of images (the last one padded, so
  nothing recompiles); one jitted call computes a chunk's J noisy copies of
  every ensemble base, vectorized over images, noise samples and IG steps.
  When that exceeds `evaluations_per_step`, the J samples are split into equal
  groups whose statistics are merged exactly (pairwise mean/M2 update), so
  memory stays flat. A Python loop drives the chunks: on XLA:CPU convolutions
  run markedly slower inside a `lax.map`/`scan` body than as a top-level
  computation.
- Randomness is per image: image i's key is fold_in(key, indices[i]), noise
  sample s of it derives from that key and s alone. Maps therefore do not
  depend on the batch an image is in, on the chunking, nor on the sharding.
- A batch sharded over a mesh axis is computed with `shard_map`: each device
  explains its own rows, with no communication, and the maps come back sharded
  like the images.
- Max pooling is differentiated through reshapes (`lowering.py`): the same
  values, several times faster on CPU than `select_and_scatter`.
- Compiled functions are cached per (plan, options, chunk shape, layout); the
  model's weights are arguments (see `model.py`), so a model with new weights
  of the same shapes reuses the compiled code.
"""

import dataclasses
import functools
import math
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from roar_jax.saliency import controls
from roar_jax.saliency import estimators  # pylint: disable=unused-import
from roar_jax.saliency import inputs as inputs_lib
from roar_jax.saliency import lowering
from roar_jax.saliency import model as model_lib
from roar_jax.saliency import options as options_lib
from roar_jax.saliency import registry

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class _Plan:
  """What the jitted calls compute (hashable: a compilation cache key)."""
  plain: tuple[str, ...]  # Base methods on the clean images.
  ensembles: tuple[tuple[str, tuple[str, ...]], ...]  # (base, kinds).
  options: options_lib.Options
  predict: bool  # Targets are the model's predictions (computed inside).
  uses_model: bool
  registry_version: int  # A re-registered method compiles anew.

  def _cost(self, names) -> int:
    return sum(registry.parse(n)[1].cost(self.options) for n in names)

  def plain_cost(self) -> int:
    """Model passes per image on the clean images (targets included)."""
    return self._cost(self.plain) + (1 if self.predict else 0)

  def noisy_cost(self) -> int:
    """Model passes per image and noise sample."""
    return self._cost(b for b, _ in self.ensembles)


def _make_plan(methods: Sequence[str], opts: options_lib.Options,
               predict: bool, model: model_lib.Model) -> _Plan:
  plain, ensembles = [], {}
  uses_model = False
  for method in methods:
    kind, est = registry.parse(method)
    if not est.model_free:
      uses_model = True
      model_lib.require(model, "logits", method)
    for part in est.needs:
      model_lib.require(model, part, method)
    if kind is None:
      plain.append(est.name)
    else:
      ensembles.setdefault(est.name, []).append(kind)
  ens = tuple((b, tuple(k for k in registry.ENSEMBLES if k in kinds))
              for b, kinds in ensembles.items())
  return _Plan(tuple(plain), ens, opts, predict and uses_model, uses_model,
               registry.version())


def _call(name: str, inputs: inputs_lib.Inputs) -> Array:
  _, est = registry.parse(name)
  inputs.method = name
  maps = est.fn(inputs)
  if maps.shape != inputs.images.shape:
    raise ValueError(f"method {name!r} returned maps of shape {maps.shape}; "
                     f"expected the images' shape {inputs.images.shape}")
  return maps.astype(jnp.float32)


def _lower(model: model_lib.Model, opts: options_lib.Options):
  """The model with its max pooling rewritten for fast gradients."""
  if not opts.fast_pooling:
    return model
  wrap = lambda f: None if f is None else lowering.fast_pooling(f)
  return model_lib.Model(logits=wrap(model.logits),
                         guided_logits=wrap(model.guided_logits),
                         features=wrap(model.features), head=wrap(model.head))


def _image_keys(key, indices):
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(indices)


def _plain_rows(plan: _Plan, impl, model, images, targets, indices, key,
                baseline):
  """Targets and the plain methods' maps for a chunk [c, H, W, C] (traced)."""
  model = _lower(model, plan.options)
  key = _make_key(key, impl)
  if plan.predict:
    targets = jnp.argmax(model.logits(images), axis=-1)
  targets = targets.astype(jnp.int32)
  inputs = inputs_lib.Inputs(model, images,
                             targets if plan.uses_model else None,
                             _image_keys(key, indices), plan.options,
                             baseline)
  return targets, {name: _call(name, inputs) for name in plan.plain}


def _noisy_rows(plan: _Plan, impl, group: int, final: bool, model, images,
                targets, indices, key, baseline, offset):
  """Noise samples offset .. offset+group-1 of every ensemble base (traced).

  Returns the maps when the group is all J samples (`final`), else per base
  the group's (mean, sum of squared deviations, mean of squares).
  """
  model = _lower(model, plan.options)
  key = _make_key(key, impl)
  c = images.shape[0]
  axes = tuple(range(1, images.ndim))
  sigma = plan.options.noise_scale * (jnp.max(images, axis=axes) -
                                      jnp.min(images, axis=axes))
  # Sample s of image i: normal(fold_in(fold_in(k_i, NOISE), s)); it depends
  # neither on the batch, nor on J, nor on how samples are grouped.
  samples = offset + jnp.arange(group)
  sample_keys = jax.vmap(lambda k: jax.vmap(
      lambda s: jax.random.fold_in(jax.random.fold_in(
          k, controls.NOISE_STREAM), s))(samples))(_image_keys(key, indices))
  noise = jax.vmap(jax.vmap(lambda k: jax.random.normal(
      k, images.shape[1:], images.dtype)))(sample_keys)
  noisy = images[:, None] + sigma.reshape((c, 1) + (1,) * len(axes)) * noise
  flat = lambda a: a.reshape((c * group,) + a.shape[2:])
  inputs = inputs_lib.Inputs(
      model, flat(noisy),
      jnp.repeat(targets, group) if plan.uses_model else None,
      flat(sample_keys), plan.options, baseline)
  out = {}
  for base, kinds in plan.ensembles:
    a = _call(base, inputs).reshape(noisy.shape)
    mean = jnp.mean(a, axis=1)
    # Two-pass: squared deviations from the mean, not E[a^2] - E[a]^2, which
    # cancels catastrophically when the variance is small next to the mean.
    m2 = jnp.sum(jnp.square(a - mean[:, None]), axis=1)
    msq = jnp.mean(jnp.square(a), axis=1)
    if final:
      out[base] = _finalize_base(base, kinds, mean, m2, msq, group)
    else:
      out[base] = (mean, m2, msq)
  if final:
    return {k: v for maps in out.values() for k, v in maps.items()}
  return out


def _finalize_base(base, kinds, mean, m2, msq, count) -> dict[str, Array]:
  maps = {"sg": mean, "sg_sq": msq, "var": m2 / count}
  return {f"{kind}.{base}": maps[kind] for kind in kinds}


def _combine(acc, new, n_acc, n_new):
  """Merges two groups' (mean, M2, mean of squares), exactly and stably.

  Chan, Golub and LeVeque's pairwise update: M2 = M2_a + M2_b +
  delta^2 n_a n_b / n with delta = mean_b - mean_a.
  """
  n = n_acc + n_new
  out = {}
  for base in acc:
    (mean_a, m2_a, msq_a), (mean_b, m2_b, msq_b) = acc[base], new[base]
    delta = mean_b - mean_a
    out[base] = (mean_a + delta * (n_new / n),
                 m2_a + m2_b + jnp.square(delta) * (n_acc * n_new / n),
                 msq_a + (msq_b - msq_a) * (n_new / n))
  return out


@dataclasses.dataclass(frozen=True)
class _Layout:
  """How the batch axis is split: `shards` row blocks, one per device."""
  shards: int
  mesh: Optional[Mesh] = None
  axis: Any = None  # Mesh axis name(s) of the batch dimension.

  def spec(self, batched: bool) -> P:
    return P(self.axis) if batched and self.mesh is not None else P()

  def sharding(self, batched: bool):
    if self.mesh is None:
      return None
    return NamedSharding(self.mesh, self.spec(batched))


def _layout(images) -> _Layout:
  sharding = getattr(images, "sharding", None)
  if isinstance(sharding, NamedSharding) and len(sharding.spec) > 0:
    axis = sharding.spec[0]
    if axis is not None:
      names = axis if isinstance(axis, tuple) else (axis,)
      shards = math.prod(sharding.mesh.shape[n] for n in names)
      if shards > 1:
        return _Layout(shards, sharding.mesh, axis)
  return _Layout(1)


def _per_device(fn, layout: _Layout, batched: Sequence[bool]):
  """fn on each device's rows (shard_map), or fn itself on one device."""
  if layout.mesh is None:
    return fn
  return jax.shard_map(fn, mesh=layout.mesh,
                       in_specs=tuple(layout.spec(b) for b in batched),
                       out_specs=layout.spec(True), check_vma=False)


@functools.lru_cache(maxsize=None)
def _prepare_fn(layout: _Layout, padded: int):
  """[B, ...] -> [shards, padded, ...]: each device's rows, zero-padded."""
  def prepare(x):
    x = x.reshape((layout.shards, x.shape[0] // layout.shards) + x.shape[1:])
    pad = [(0, 0)] * x.ndim
    pad[1] = (0, padded - x.shape[1])
    return jnp.pad(x, pad)
  return jax.jit(prepare, out_shardings=layout.sharding(True))


def _take(a, s, chunk):
  """Chunk s of every device's rows: [shards, L, ...] -> [shards * c, ...]."""
  a = jax.lax.dynamic_slice_in_dim(a, s * chunk, chunk, 1)
  return a.reshape((-1,) + a.shape[2:])


# Which arguments of the per-device functions are batched (sharded by row):
# model, images, targets, indices, key, baseline (, offset).
_BATCHED = (False, True, True, True, False, False)


@functools.lru_cache(maxsize=None)
def _plain_fn(plan: _Plan, impl, layout: _Layout, chunk: int):
  """Jitted: chunk s -> (targets [shards * c], {method: maps})."""
  rows = _per_device(functools.partial(_plain_rows, plan, impl), layout,
                     _BATCHED)

  def step(model, images, targets, indices, key, baseline, s):
    return rows(model, _take(images, s, chunk), _take(targets, s, chunk),
                _take(indices, s, chunk), key, baseline)

  return jax.jit(step, out_shardings=layout.sharding(True))


@functools.lru_cache(maxsize=None)
def _noisy_fn(plan: _Plan, impl, layout: _Layout, chunk: int, group: int,
              final: bool):
  """Jitted: chunk s, samples offset.. -> maps (final) or group statistics."""
  rows = _per_device(functools.partial(_noisy_rows, plan, impl, group, final),
                     layout, _BATCHED + (False,))

  def step(model, images, targets, indices, key, baseline, s, offset):
    return rows(model, _take(images, s, chunk), targets,
                _take(indices, s, chunk), key, baseline, offset)

  return jax.jit(step, out_shardings=layout.sharding(True))


@functools.lru_cache(maxsize=None)
def _combine_fn(layout: _Layout):
  return jax.jit(_combine, out_shardings=layout.sharding(True))


@functools.lru_cache(maxsize=None)
def _finalize_fn(plan: _Plan, layout: _Layout):
  def finalize(acc):
    maps = {}
    for base, kinds in plan.ensembles:
      maps.update(_finalize_base(base, kinds, *acc[base],
                                 plan.options.num_samples))
    return maps
  return jax.jit(finalize, out_shardings=layout.sharding(True))


@functools.lru_cache(maxsize=None)
def _assemble_fn(layout: _Layout, chunk: int, rows: int):
  """Chunks [shards * c] -> maps [B]: regrouped per device, padding dropped."""
  def assemble(chunks):
    x = jnp.concatenate(
        [c.reshape((layout.shards, chunk) + c.shape[1:]) for c in chunks],
        axis=1)[:, :rows]
    return x.reshape((layout.shards * rows,) + x.shape[2:])
  return jax.jit(assemble, out_shardings=layout.sharding(True))


def _step_sizes(plan: _Plan, rows: int) -> tuple[int, int]:
  """(images per step, noise samples per step) within the evaluation budget."""
  opts = plan.options
  budget = opts.evaluations_per_step or (
      options_lib.default_evaluations_per_step())
  j, noisy = opts.num_samples, plan.noisy_cost()
  chunk = opts.chunk_size
  if chunk is None:
    per_image = max(plan.plain_cost(), j * noisy if plan.ensembles else 0)
    chunk = max(1, budget // per_image) if per_image else rows
  chunk = max(1, min(chunk, rows))
  # The largest divisor of J that keeps a step within budget (at least 1):
  # equal groups, so no sample is padded.
  group = max([g for g in range(1, j + 1)
               if j % g == 0 and chunk * g * max(noisy, 1) <= budget] or [1])
  return chunk, group


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


def _batched(x, layout: _Layout):
  """x [B, ...] sharded like the images (a no-op when it already is)."""
  if layout.mesh is None:
    return jnp.asarray(x)
  return jax.device_put(x, layout.sharding(True))


def _replicated(tree, layout: _Layout):
  """Every leaf on every device of the mesh (a no-op when it already is).

  Leaves that live on one local device are copied through the host when
  several processes run, since a process can only place its own shards.
  """
  if layout.mesh is None:
    return tree
  target = layout.sharding(False)

  def put(leaf):
    if isinstance(leaf, jax.Array):
      if leaf.sharding.is_equivalent_to(target, leaf.ndim) or (
          not leaf.is_fully_addressable):
        return leaf
      if jax.process_count() > 1:
        leaf = np.asarray(leaf)
    return jax.device_put(leaf, target)

  return jax.tree.map(put, tree)


def _key_parts(key) -> tuple[Any, Optional[str]]:
  """(key data, implementation name): plain arrays that any process can place.

  A legacy raw uint32 key has no implementation name.
  """
  if not isinstance(key, jax.Array) and not isinstance(key, np.ndarray):
    raise ValueError(f"key must be a PRNG key (jax.random.key(seed)), got "
                     f"{type(key).__name__}")
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.shape:
      raise ValueError(f"key must be a single PRNG key, got shape {key.shape}")
    data = jax.random.key_data(key)
    return (np.asarray(data) if data.is_fully_addressable else data,
            str(jax.random.key_impl(key)))
  return key, None


def _make_key(data, impl: Optional[str]):
  return data if impl is None else jax.random.wrap_key_data(data, impl=impl)


def explain_all(model: model_lib.Model, images, *, methods: Sequence[str],
                key: Array, target=None, indices=None,
                **options) -> dict[str, Array]:
  """Maps of several methods for a batch of images, shared work done once.

  Args:
    model: a `saliency.Model` (e.g. from `models.explainable`).
    images: [B, H, W, C] float, in the model's input space; a jax.Array
      sharded over a mesh axis gives maps sharded the same way.
    methods: method names (see `available_methods()`), e.g. ('gradient',
      'sg.gradient', 'sg_sq.gradient', 'var.gradient', 'random').
    key: PRNG key of the run (noise of the ensembles, the random control).
    target: None explains each image's predicted class (argmax of the
      logits); an int array [B] names the classes.
    indices: int array [B], each image's index in its split (default 0..B-1).
      Image i's randomness derives from fold_in(key, indices[i]) alone.
    **options: num_samples (15), noise_scale (0.15), ig_steps (25), baseline
      (IG reference image, broadcastable to [H, W, C]; default 0: pass the
      black image in input space), chunk_size (images per vectorized step),
      evaluations_per_step, fast_pooling (see `options.Options`).

  Returns:
    {method: float32 maps shaped like `images`}.

  Raises:
    ValueError: an unknown method or option, a Model without a part a method
      needs, or inputs of the wrong shape.
  """
  if isinstance(methods, str):
    methods = (methods,)
  methods = tuple(dict.fromkeys(methods))
  if not methods:
    raise ValueError("methods is empty; known: "
                     f"{registry.available_methods()}")
  if not isinstance(model, model_lib.Model):
    raise ValueError("model must be a saliency.Model (see "
                     f"models.explainable), got {type(model).__name__}")
  opts, arrays = options_lib.from_kwargs(options)
  plan = _make_plan(methods, opts, target is None, model)
  shape = tuple(getattr(images, "shape", np.shape(images)))
  if len(shape) != 4 or not all(shape):
    raise ValueError(f"images must be [B, H, W, C] with B, H, W, C > 0, got "
                     f"shape {shape}")
  batch = shape[0]
  if not jnp.issubdtype(getattr(images, "dtype", np.float32), jnp.floating):
    raise ValueError("images must be floating point (in the model's input "
                     f"space), got {images.dtype}")
  baseline = arrays.get("baseline", 0.0)
  try:
    np.broadcast_shapes(np.shape(baseline), shape[1:])
  except ValueError:
    raise ValueError(f"baseline of shape {np.shape(baseline)} does not "
                     f"broadcast to an image of shape {shape[1:]}") from None
  layout = _layout(images)
  if batch % layout.shards:
    raise ValueError(f"images: batch {batch} is not divisible by the "
                     f"{layout.shards} shards of its batch axis")
  rows = batch // layout.shards
  if indices is not None:
    indices_in = _as_int_rows(indices, "indices", batch)
  else:
    indices_in = np.arange(batch, dtype=np.int32)
  # Without a target, the indices stand in: one call signature; the plan
  # computes the predictions instead.
  targets = (indices_in if target is None else
             _as_int_rows(target, "target", batch))
  chunk, group = _step_sizes(plan, rows)
  num_chunks = -(-rows // chunk)
  prepare = _prepare_fn(layout, num_chunks * chunk)
  as_int = lambda a: a.astype(jnp.int32) if isinstance(a, jax.Array) else (
      np.asarray(a, np.int32))
  images_p = prepare(_batched(images, layout).astype(jnp.float32))
  targets_p = prepare(_batched(as_int(targets), layout))
  indices_p = prepare(_batched(as_int(indices_in), layout))
  key, impl = _key_parts(key)
  baseline = np.broadcast_to(np.asarray(baseline, np.float32), shape[1:])
  model, key, baseline = _replicated((model, key, baseline), layout)
  args = (model, images_p, targets_p, indices_p, key, baseline)
  plain = _plain_fn(plan, impl, layout, chunk)
  num_groups = opts.num_samples // group
  noisy = _noisy_fn(plan, impl, layout, chunk, group, num_groups == 1)
  chunks = []
  for s in range(num_chunks):
    s = np.int32(s)
    chunk_targets, maps = plain(*args, s)
    if plan.ensembles:
      stats = None
      for k in range(num_groups):
        new = noisy(model, images_p, chunk_targets, indices_p, key, baseline,
                    s, np.int32(k * group))
        stats = new if stats is None else _combine_fn(layout)(
            stats, new, np.float32(k * group), np.float32(group))
      maps.update(stats if num_groups == 1 else
                  _finalize_fn(plan, layout)(stats))
    chunks.append(maps)
  assemble = _assemble_fn(layout, chunk, rows)
  return {m: assemble([c[m] for c in chunks]) for m in methods}


def gradient_passes(model: model_lib.Model, methods: Sequence[str],
                    image_shape: Sequence[int], **options) -> int:
  """Gradient passes per image that `explain_all(methods=...)` runs.

  Counted, not declared: one image's computations are traced (nothing runs)
  and every gradient they take is counted, so work that methods share counts
  once: the sg./sg_sq./var. ensembles of one base draw the same J noisy
  evaluations, `gradient_x_input` reuses `gradient`. The forward pass that
  predicts the explained class is not a gradient pass.

  Args:
    model: a `saliency.Model`.
    methods: method names, as `explain_all` takes them.
    image_shape: (H, W, C) of one image in the model's input space.
    **options: as `explain_all` (num_samples, ig_steps, ...).

  Returns:
    Passes (forward + backward over one image) per explained image.
  """
  if isinstance(methods, str):
    methods = (methods,)
  opts, _ = options_lib.from_kwargs(options)
  plan = _make_plan(tuple(dict.fromkeys(methods)), opts, True, model)
  image = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  row = jax.ShapeDtypeStruct((1,), jnp.int32)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)  # A raw key: impl None.
  baseline = jax.ShapeDtypeStruct(tuple(image_shape), jnp.float32)
  with inputs_lib.counting_passes() as plain:
    jax.eval_shape(functools.partial(_plain_rows, plan, None, model), image,
                   row, row, key, baseline)
  with inputs_lib.counting_passes() as noisy:
    if plan.ensembles:  # One noise sample; every sample costs the same.
      jax.eval_shape(functools.partial(_noisy_rows, plan, None, 1, True, model),
                     image, row, row, key, baseline,
                     jax.ShapeDtypeStruct((), jnp.int32))
  return plain[0] + opts.num_samples * noisy[0]


def explain(model: model_lib.Model, images, *, method: str, key: Array,
            target=None, indices=None, **options) -> Array:
  """Maps of one method: `explain_all(..., methods=(method,))[method]`.

  Args:
    model: a `saliency.Model`.
    images: [B, H, W, C] float, in the model's input space.
    method: a method name (see `available_methods()`).
    key: PRNG key of the run.
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
