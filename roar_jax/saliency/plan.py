"""The plan of an `explain_all` call, and the jitted steps that carry it out.

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
  memory stays flat. A Python loop drives the chunks: on XLA:CPU convolution
  gradients run markedly slower inside a `lax.map`/`scan` body than as a
  top-level computation. (Forward-only evaluations do not: the perturbation
  methods loop over their samples with `inputs.group_loop`.)
- Randomness is per image: image i's key is fold_in(key, indices[i]), noise
  sample s of it derives from that key and s alone. Maps therefore do not
  depend on the batch an image is in, on the chunking, nor on the sharding.
- Max pooling is differentiated through reshapes (`lowering.py`): the same
  values, several times faster on CPU than `select_and_scatter`.
- Compiled functions are cached per (plan, options, chunk shape, layout); the
  model's weights are arguments (see `model.py`), so a model with new weights
  of the same shapes reuses the compiled code.
"""

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from roar_jax.saliency import controls
from roar_jax.saliency import inputs as inputs_lib
from roar_jax.saliency import layout as layout_lib
from roar_jax.saliency import lowering
from roar_jax.saliency import model as model_lib
from roar_jax.saliency import options as options_lib
from roar_jax.saliency import registry

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Plan:
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

  def random(self) -> bool:
    """Whether any method draws random numbers (then a key is needed)."""
    return bool(self.ensembles) or any(
        registry.parse(n)[1].random for n in self.plain)

  def prepares(self) -> tuple:
    """The distinct host prepare functions of the plain methods."""
    fns = [registry.parse(n)[1].prepare for n in self.plain]
    return tuple(dict.fromkeys(f for f in fns if f is not None))


def make_plan(methods: Sequence[str], opts: options_lib.Options,
              predict: bool, model: model_lib.Model) -> Plan:
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
  return Plan(tuple(plain), ens, opts, predict and uses_model, uses_model,
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
  """The model with its max pooling rewritten for fast gradients.

  deeplift_logits is left alone: it rewrites max pooling itself.
  """
  if not opts.fast_pooling:
    return model
  wrap = lambda f: None if f is None else lowering.fast_pooling(f)
  return model_lib.Model(logits=wrap(model.logits),
                         guided_logits=wrap(model.guided_logits),
                         features=wrap(model.features), head=wrap(model.head),
                         deeplift_logits=model.deeplift_logits)


def image_keys(key, indices):
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(indices)


def plain_rows(plan: Plan, impl, model, images, targets, indices, key,
               baseline, extras, shared):
  """Targets and the plain methods' maps for a chunk [c, H, W, C] (traced)."""
  model = _lower(model, plan.options)
  key = layout_lib.make_key(key, impl)
  if plan.predict:
    targets = jnp.argmax(model.logits(images), axis=-1)
  targets = targets.astype(jnp.int32)
  inputs = inputs_lib.Inputs(model, images,
                             targets if plan.uses_model else None,
                             image_keys(key, indices), plan.options,
                             baseline, extras, shared)
  return targets, {name: _call(name, inputs) for name in plan.plain}


def noisy_rows(plan: Plan, impl, group: int, final: bool, model, images,
               targets, indices, key, baseline, shared, offset):
  """Noise samples offset .. offset+group-1 of every ensemble base (traced).

  Returns the maps when the group is all J samples (`final`), else per base
  the group's (mean, sum of squared deviations, mean of squares).
  """
  model = _lower(model, plan.options)
  key = layout_lib.make_key(key, impl)
  c = images.shape[0]
  axes = tuple(range(1, images.ndim))
  sigma = plan.options.noise_scale * (jnp.max(images, axis=axes) -
                                      jnp.min(images, axis=axes))
  # Sample s of image i: normal(fold_in(fold_in(k_i, NOISE), s)); it depends
  # neither on the batch, nor on J, nor on how samples are grouped.
  samples = offset + jnp.arange(group)
  sample_keys = jax.vmap(lambda k: jax.vmap(
      lambda s: jax.random.fold_in(jax.random.fold_in(
          k, controls.NOISE_STREAM), s))(samples))(image_keys(key, indices))
  noise = jax.vmap(jax.vmap(lambda k: jax.random.normal(
      k, images.shape[1:], images.dtype)))(sample_keys)
  noisy = images[:, None] + sigma.reshape((c, 1) + (1,) * len(axes)) * noise
  flat = lambda a: a.reshape((c * group,) + a.shape[2:])
  inputs = inputs_lib.Inputs(
      model, flat(noisy),
      jnp.repeat(targets, group) if plan.uses_model else None,
      flat(sample_keys), plan.options, jnp.repeat(baseline, group, axis=0),
      None, shared)
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


# Which arguments of the per-device functions are batched (sharded by row).
_PLAIN_BATCHED = (False, True, True, True, False, True, True, False)
_NOISY_BATCHED = (False, True, True, True, False, True, False, False)


@functools.lru_cache(maxsize=None)
def plain_fn(plan: Plan, impl, layout: layout_lib.Layout, chunk: int):
  """Jitted: chunk s -> (targets [shards * c], {method: maps})."""
  rows = layout_lib.per_device(functools.partial(plain_rows, plan, impl),
                               layout, _PLAIN_BATCHED)
  take = layout_lib.take

  def step(model, images, targets, indices, key, baseline, extras, shared,
           s):
    extras = {k: take(v, s, chunk) for k, v in extras.items()}
    return rows(model, take(images, s, chunk), take(targets, s, chunk),
                take(indices, s, chunk), key, take(baseline, s, chunk),
                extras, shared)

  return jax.jit(step, out_shardings=layout.sharding(True))


@functools.lru_cache(maxsize=None)
def noisy_fn(plan: Plan, impl, layout: layout_lib.Layout, chunk: int,
             group: int, final: bool):
  """Jitted: chunk s, samples offset.. -> maps (final) or group statistics."""
  rows = layout_lib.per_device(
      functools.partial(noisy_rows, plan, impl, group, final), layout,
      _NOISY_BATCHED)
  take = layout_lib.take

  def step(model, images, targets, indices, key, baseline, shared, s,
           offset):
    return rows(model, take(images, s, chunk), targets,
                take(indices, s, chunk), key, take(baseline, s, chunk),
                shared, offset)

  return jax.jit(step, out_shardings=layout.sharding(True))


@functools.lru_cache(maxsize=None)
def combine_fn(layout: layout_lib.Layout):
  return jax.jit(_combine, out_shardings=layout.sharding(True))


@functools.lru_cache(maxsize=None)
def finalize_fn(plan: Plan, layout: layout_lib.Layout):
  def finalize(acc):
    maps = {}
    for base, kinds in plan.ensembles:
      maps.update(_finalize_base(base, kinds, *acc[base],
                                 plan.options.num_samples))
    return maps
  return jax.jit(finalize, out_shardings=layout.sharding(True))


def step_sizes(plan: Plan, rows: int) -> tuple[int, int]:
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
