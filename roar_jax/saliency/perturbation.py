"""Occlusion and RISE: maps from the logits of perturbed copies of an image.

Both need only `Model.logits`, so they work on any JAX function of images.
Every model evaluation is batched: the perturbed copies of all the chunk's
images are evaluated together, `group` copies per image at a time in a
`lax.scan` (`inputs.group_loop`), so memory stays flat whatever the number
of windows or masks. A perturbation replaces part of the image by the
baseline (one image, or one per image).
"""

import numpy as np
import jax
import jax.numpy as jnp

from roar_jax.saliency import inputs as inputs_lib
from roar_jax.saliency import registry

Array = jax.Array

# Random streams folded into an image's key (controls.py uses 1 and 2).
RISE_STREAM = 3


def balanced_group(total: int, group: int) -> int:
  """Samples per `group_loop` step: as many steps as `group` takes, the
  fewest copies per step.

  A loop over `total` samples in groups of `group` pads its last step up to
  a full group (occlusion's 49 windows in groups of 8 run 56 forwards); the
  same number of steps with ceil(total / steps) samples per step pads fewer
  than one per step (49 in 7 groups of 7).
  """
  group = max(1, min(group, total))
  trips = -(-total // group)
  return -(-total // trips)


def evaluate(inputs: inputs_lib.Inputs, keep: Array,
             probabilities: bool = False) -> Array:
  """The explained logit (or probability) of every perturbed copy.

  Args:
    inputs: the batch (images [N, H, W, C], baseline, targets).
    keep: [N, G, H, W] or [N, G, H, W, C] in [0, 1]: 1 keeps the image, 0
      puts the baseline.
    probabilities: score by the softmax probability of the explained class
      instead of its logit.

  Returns:
    [N, G] scores, all N x G copies in one forward pass.
  """
  x = inputs.images
  x0 = jnp.broadcast_to(inputs.baseline, x.shape).astype(x.dtype)
  n, g = keep.shape[:2]
  if keep.ndim == 4:
    keep = keep[..., None]
  copies = x0[:, None] + keep.astype(x.dtype) * (x - x0)[:, None]
  copies = copies.reshape((n * g,) + x.shape[1:])
  logits = inputs.part("logits")
  fn = (lambda z: jax.nn.softmax(logits(z), axis=-1)) if probabilities else (
      logits)
  y = inputs_lib.target_logits(fn, copies, jnp.repeat(inputs.targets, g))
  return y.reshape(n, g)


def occlusion_windows(height: int, width: int, window: int,
                      stride: int) -> np.ndarray:
  """[K, 2] (top, left) of the windows; the last one meets the far edge."""
  def starts(n):
    s = list(range(0, n - window + 1, stride))
    if s[-1] + window < n:
      s.append(n - window)
    return s
  return np.array([(t, l) for t in starts(height) for l in starts(width)],
                  np.int32)


@registry.register("occlusion", baseline=True)
def occlusion(inputs: inputs_lib.Inputs) -> Array:
  """Zeiler and Fergus (2014): mean, over the windows covering a position,
  of f(x) - f(x with the window set to the baseline), in every channel.

  Window and stride: `occlusion_window` (default: the smaller image side / 8)
  and `occlusion_stride` (default: half the window).
  """
  x = inputs.images
  n, h, w = x.shape[:3]
  window, stride = inputs.options.occlusion_geometry(h, w)
  corners = occlusion_windows(h, w, window, stride)
  cover = np.zeros((h, w), np.float32)
  for t, l in corners:
    cover[t:t + window, l:l + window] += 1
  corners = jnp.asarray(corners)
  fx = inputs.predicted()
  rows, cols = jnp.arange(h), jnp.arange(w)
  group = balanced_group(len(corners), inputs.group_size())

  def body(ids, valid):
    tl = corners[jnp.minimum(ids, len(corners) - 1)]
    inside = ((rows[None, :, None] >= tl[:, 0, None, None]) &
              (rows[None, :, None] < tl[:, 0, None, None] + window) &
              (cols[None, None, :] >= tl[:, 1, None, None]) &
              (cols[None, None, :] < tl[:, 1, None, None] + window))
    inside = inside.astype(x.dtype)  # [g, H, W]
    y = evaluate(inputs, jnp.broadcast_to(1 - inside, (n,) + inside.shape))
    drop = (fx[:, None] - y) * valid.astype(x.dtype)  # [N, g]
    return jnp.einsum("ng,ghw->nhw", drop, inside)

  total = inputs_lib.group_loop(len(corners), group, body)
  maps = total / jnp.asarray(cover)
  return jnp.broadcast_to(maps[..., None], x.shape)


def rise_masks(key: Array, ids: Array, height: int, width: int, cells: int,
               keep: float) -> Array:
  """RISE's masks number `ids` of one image: [len(ids), H, W] in [0, 1].

  Mask i: a cells x cells grid of Bernoulli(keep) cells, bilinearly
  upsampled to (cells + 1) x cell size, then cropped to H x W at a random
  shift within one cell (Petsiuk et al. 2018). It depends on the key and i
  alone.
  """
  ch, cw = -(-height // cells), -(-width // cells)
  up = ((cells + 1) * ch, (cells + 1) * cw)

  def one(i):
    k_grid, k_y, k_x = jax.random.split(jax.random.fold_in(key, i), 3)
    grid = jax.random.bernoulli(k_grid, keep, (cells, cells))
    big = jax.image.resize(grid.astype(jnp.float32), up, "bilinear")
    dy = jax.random.randint(k_y, (), 0, ch)
    dx = jax.random.randint(k_x, (), 0, cw)
    return jax.lax.dynamic_slice(big, (dy, dx), (height, width))

  return jax.vmap(one)(ids)


@registry.register("rise", random=True, baseline=True)
def rise(inputs: inputs_lib.Inputs) -> Array:
  """Petsiuk et al. (2018): sum_i f(x masked_i) M_i / (N p), in every channel.

  f is the softmax probability of the explained class, as in the paper (its
  logit with `rise_probabilities=False`). N = `rise_masks` (4000), an 8x8
  grid (`rise_cells`), keep probability p = `rise_keep` (0.5); the
  masked-out part is the baseline.
  """
  x = inputs.images
  n, h, w = x.shape[:3]
  opts = inputs.options
  keys = inputs.image_keys(RISE_STREAM)
  group = balanced_group(opts.rise_masks, inputs.group_size())

  def body(ids, valid):
    masks = jax.vmap(lambda k: rise_masks(k, ids, h, w, opts.rise_cells,
                                          opts.rise_keep))(keys)
    y = evaluate(inputs, masks, opts.rise_probabilities)
    y = y * valid.astype(x.dtype)  # [N, g]
    return jnp.einsum("ng,nghw->nhw", y, masks)

  total = inputs_lib.group_loop(opts.rise_masks, group, body)
  maps = total / (opts.rise_masks * opts.rise_keep)
  return jnp.broadcast_to(maps[..., None], x.shape)
