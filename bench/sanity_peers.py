r"""The repaired randomization tests against Quantus 0.6, and their limit.

  python bench/sanity_peers.py [--quick] [--images 64] [--width 32]
      [--rounds 3] [--out FILE.json]

A SmallCNN (width 32, 10 classes, random init, small random biases) in
Flax and as its torch twin (bench/torch_twins.py), random 32x32x3 images
normalized as configs/cifar10.py does, gradient maps of the predicted class.
For bottom-up MPRT, eMPRT, sMPRT (50 samples, noise 0.1), random logit:
ours: the sanity stage's functions (`maps.explain`/`explainer`,
`randomization.randomize`, `repaired.FlatSpearman`/`emprt`/`smooth`/
`ssim_flat`), Quantus's similarity only; the peer: Quantus's
`MPRT(layer_order='bottom_up')`, `EfficientMPRT`, `SmoothMPRT` (via
`quantus.explain`), `RandomLogit` (one image per batch, so that its
normalization is per image, as ours) on the twin, its explain_func the
twin's torch gradient (the natural Quantus setup).
The twin's layers re-initialize to roar_jax's arrays (as in
tests/references/make_sanity_repaired.py).

The scores are checked first (Quantus with our maps: ATOL; with torch
gradients: TORCH_ATOL); no timing is printed without agreement. Rounds interleave ours and the peer,
best of --rounds: images/s, ours/peer. Then our work against the bare
gradient passes it needs (`passes`), timed as one `jax.jit(jax.grad(...))`
of the model on the same batch: passes/s and ours/bare (1.0: the test costs
what its gradients alone cost). --quick: 8 images, width 8.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

# pylint: disable=g-import-not-at-top,wrong-import-position
# Quantus segfaults importing TensorFlow beside torch: blocked for it (it
# takes the torch path), lifted for the stage's modules (training imports
# it), set again: Quantus asks find_spec("tensorflow") at every call.
sys.modules["tensorflow"] = None
import quantus  # noqa: E402
import torch  # noqa: E402
del sys.modules["tensorflow"]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from bench import torch_twins  # noqa: E402
from roar_jax import models  # noqa: E402
from roar_jax.benchmark.sanity import maps as maps_lib  # noqa: E402
from roar_jax.benchmark.sanity import randomization  # noqa: E402
from roar_jax.benchmark.sanity import repaired  # noqa: E402
from roar_jax.benchmark.sanity import repaired_tests  # noqa: E402
from roar_jax.benchmark.sanity import settings  # noqa: E402
from roar_jax.config import defaults as config_lib  # noqa: E402
sys.modules["tensorflow"] = None
# pylint: enable=g-import-not-at-top,wrong-import-position

SEED, CLASSES, SIZE = 0, 10, 32
ATOL = 1e-6  # tests/test_sanity_repaired.py's tolerance on the scores.
# Torch maps differ from ours by rounding (~1e-7 of the scale; SmoothMPRT
# sums them / S in float32): near-equal entries swap ranks (~1e-6 a swap in
# Spearman) or cross an eMPRT bin edge (up to ~log(D) / D = 3e-3 nats).
TORCH_ATOL = 1e-3
OPTS = repaired.RepairedOptions()  # Quantus's defaults.
TESTS = ("bottom_up", "emprt", "smprt", "random_logit")
PEER = {"bottom_up": "MPRT bottom_up", "emprt": "EfficientMPRT",
        "smprt": "SmoothMPRT", "random_logit": "RandomLogit"}


class Setup:
  """The model, its twin, the images and the classes both sides use."""

  def __init__(self, n: int, width: int):
    self.config = config_lib.load("cifar10")
    self.config.seed = SEED
    self.config.sanity = ml_collections.ConfigDict({"target": "predicted"})
    rng = np.random.default_rng(SEED)
    pixels = rng.integers(0, 256, (n, SIZE, SIZE, 3)) / 255.0
    mean, std = (np.asarray(self.config.data[k]) for k in ("mean", "std"))
    x = ((pixels - mean) / std).astype(np.float32)
    self.module = models.SmallCNN(CLASSES, width=width)
    params = jax.tree.map(np.asarray, self.module.init(
        jax.random.key(SEED), x[:1])["params"])
    for leaf in params.values():
      leaf["bias"] = (rng.normal(size=leaf["bias"].shape) * 0.1).astype(
          np.float32)
    self.variables = {"params": jax.tree.map(jnp.asarray, params)}
    self.images = {"image": x, "index": np.arange(n),
                   "label": np.zeros(n, np.int64)}
    self.targets = maps_lib.predictions(self.module, self.variables,
                                        self.images).astype(np.int64)
    self.names = randomization.layer_names(self.module, self.variables)
    self.steps = repaired.bottom_up_steps(self.names)
    self.key = jax.random.fold_in(jax.random.key(SEED),
                                  settings.REINIT_STREAM)
    fresh = {name: jax.tree.map(np.asarray, randomization.fresh_layer(
        self.module, self.variables, name, self.key, init="original",
        input_shape=x.shape[1:])["params"]) for name in self.names}
    self.twin = fresh_twin(torch_twins.small_cnn(params), fresh)
    self.x_nchw = x.transpose(0, 3, 1, 2).copy()

  def randomized(self, layers):
    return randomization.randomize(
        self.module, self.variables, layers, self.key, init="original",
        input_shape=self.images["image"].shape[1:])

  def explain(self, variables, images=None, target=None) -> np.ndarray:
    """The stage's gradient maps [N, H, W, C] (`maps.explain`)."""
    imgs = self.images if images is None else {
        "image": images, "index": np.arange(len(images)),
        "label": np.zeros(len(images), np.int64)}
    return maps_lib.explain(self.config, self.module, variables, imgs,
                            ("gradient",), target=self.targets
                            if target is None else target)["gradient"]


def fresh_twin(net, fresh: dict):
  """`net` whose layers' `reset_parameters` load roar_jax's re-inits."""
  class Fresh:
    def reset_parameters(self):
      if getattr(self, "fresh", None) is None:  # During construction.
        super().reset_parameters()
      elif isinstance(self, torch.nn.Conv2d):
        torch_twins.set_conv(self, self.fresh)
      else:
        torch_twins.set_dense(self, self.fresh)

  conv = type("FreshConv", (Fresh, torch.nn.Conv2d), {})
  dense = type("FreshLinear", (Fresh, torch.nn.Linear), {})
  for layer, name in zip(net.convs, ("conv1", "conv2", "conv3")):
    layer.__class__, layer.fresh = conv, fresh[name]
  net.fc.__class__, net.fc.fresh = dense, fresh["logits"]
  return net.eval()


def flax_params(net) -> dict:
  """The twin's current weights as Flax SmallCNN params."""
  def leaf(m, kernel):
    return {"kernel": jnp.asarray(kernel(m.weight.detach().numpy())),
            "bias": jnp.asarray(m.bias.detach().numpy())}
  out = {name: leaf(c, lambda w: w.transpose(2, 3, 1, 0))
         for name, c in zip(("conv1", "conv2", "conv3"), net.convs)}
  return {"params": {**out, "logits": leaf(net.fc, lambda w: w.T)}}


def jax_maps(s: "Setup"):
  """An explain_func returning our maps of the weights Quantus passes (the
  test's setup: any gap is then in the scoring, not in the maps), in
  float64 as the test's: SmoothMPRT then sums maps / S in float64 as ours,
  not in float32, whose rounding swaps the ranks of near-equal entries."""
  def explain(model, inputs, targets, **kwargs):
    del kwargs
    x = np.asarray(inputs, np.float32).transpose(0, 2, 3, 1)
    return s.explain(flax_params(model), images=x, target=np.asarray(
        targets)).transpose(0, 3, 1, 2).astype(np.float64)
  return explain


def torch_gradient(model, inputs, targets, **kwargs) -> np.ndarray:
  """Quantus's explain_func: the torch gradient of each image's class."""
  del kwargs
  v = torch.as_tensor(np.asarray(inputs, np.float32)).requires_grad_()
  t = torch.as_tensor(np.asarray(targets, np.int64)).reshape(-1, 1)
  with torch.enable_grad():
    (g,) = torch.autograd.grad(model(v).gather(1, t).sum(), v)
  return g.numpy()


def ours_bottom_up(s: Setup) -> np.ndarray:
  """MPRT scores [1 + L, N]: the original row, then each bottom-up step."""
  original = s.explain(s.variables)
  score = repaired.FlatSpearman()  # As the stage: the reference ranked once.
  rows = [score(original, original)]
  rows += [score(original, s.explain(s.randomized(l))) for l in s.steps]
  return np.array(rows)


def ours_emprt(s: Setup) -> np.ndarray:
  """eMPRT's rise [N]: the trained model to the fully randomized one."""
  return repaired.emprt(s.explain(s.variables),
                        s.explain(s.randomized(s.steps[-1])),
                        OPTS.emprt_n_bins)["rise"]


def ours_smprt(s: Setup, next_normals, quantus_order=False) -> np.ndarray:
  """sMPRT scores [1 + L, N]. `next_normals()`: each smoothing's draws
  [S - 1, N, H, W, C]. quantus_order: smooth the trained model's maps
  again for the original row (Quantus's new noise), not reuse them."""
  def smoothed(variables):
    explain = maps_lib.explainer(s.config, s.module, variables, s.images,
                                 ("gradient",), target=s.targets)
    return repaired.smooth(lambda v: explain(v)["gradient"],
                           s.images["image"], next_normals(),
                           OPTS.smprt_noise_magnitude)
  reference = smoothed(s.variables)
  again = smoothed(s.variables) if quantus_order else reference
  score = repaired.FlatSpearman()
  rows = [score(reference, again)]
  rows += [score(reference, smoothed(s.randomized(l))) for l in s.steps]
  return np.array(rows)


def ours_random_logit(s: Setup, other) -> np.ndarray:
  """SSIM [N] of the maps of the explained class and of `other`."""
  return repaired.ssim_flat(s.explain(s.variables),
                            s.explain(s.variables, target=other),
                            win_size=OPTS.ssim_window)


def quantus_other(s: Setup, metric) -> np.ndarray:
  """Quantus's other classes: its seeded draw, once per batch of one."""
  draw = np.random.RandomState(metric.seed).randint(0, CLASSES - 1, 1)[0]
  return repaired.other_classes(s.targets, CLASSES,
                                np.full(len(s.targets), draw))


def quantus_normals(s: Setup):
  """next_normals giving SmoothMPRT's noise: NumPy's global generator from
  SEED, S - 1 draws of randn(N, C, H, W) per smoothing, times Quantus's
  float32 std over our float64 one (an ulp moves near-equal ranks)."""
  rng, x = np.random.RandomState(SEED), s.images["image"]
  span = x.max(axis=(1, 2, 3), keepdims=True) - x.min(axis=(1, 2, 3),
                                                      keepdims=True)
  ratio = (OPTS.smprt_noise_magnitude * span).astype(np.float64) / (
      repaired.noise_std(x, OPTS.smprt_noise_magnitude))
  return lambda: np.stack([rng.randn(*s.x_nchw.shape).transpose(0, 2, 3, 1)
                           * ratio for _ in range(OPTS.smprt_nr_samples - 1)])


def peer_metric(test: str):
  """Quantus's metric with its defaults (RandomLogit: our class count)."""
  if test == "random_logit":
    return quantus.RandomLogit(num_classes=CLASSES, disable_warnings=True)
  kwargs = {"layer_order": "bottom_up"} if test == "bottom_up" else {}
  return {"bottom_up": quantus.MPRT, "emprt": quantus.EfficientMPRT,
          "smprt": quantus.SmoothMPRT}[test](disable_warnings=True, **kwargs)


def peer_run(s: Setup, test: str, metric=None, explain=torch_gradient):
  """Quantus's scores: [1 + L, N] for MPRT and sMPRT, [N] otherwise."""
  metric = metric or peer_metric(test)
  if test == "smprt":
    quantus.explain = explain  # SmoothMPRT calls it, not explain_func.
    np.random.seed(SEED)  # The noise quantus_normals regenerates.
  out = metric(model=s.twin, x_batch=s.x_nchw, y_batch=s.targets,
               explain_func=explain, device="cpu",
               batch_size=1 if test == "random_logit" else len(s.targets))
  if isinstance(out, dict):
    return np.array([out[k] for k in out], np.float64)
  return np.array(out, np.float64).ravel()


def ours_run(s: Setup, test: str, check: bool = False):
  """Our scores, as peer_run's; check: with the peer's noise and draws."""
  if test == "bottom_up":
    return ours_bottom_up(s)
  if test == "emprt":
    return ours_emprt(s)
  if test == "smprt":
    if check:
      return ours_smprt(s, quantus_normals(s), quantus_order=True)
    normals = repaired_tests.smooth_normals(s.config, s.images,
                                            OPTS.smprt_nr_samples)
    return ours_smprt(s, lambda: normals)
  return ours_random_logit(s, quantus_other(s, peer_metric(test)))


def check(s: Setup) -> dict[str, float]:
  """max |ours - Quantus| per test, Quantus explaining with our maps (within
  ATOL, as the test) and with the twin's torch gradients (within
  TORCH_ATOL); exits without timing on a disagreement."""
  maps = s.explain(s.variables)
  twin_maps = torch_gradient(s.twin, s.x_nchw, s.targets)
  gaps = {"maps": float(np.abs(maps - twin_maps.transpose(0, 2, 3, 1))
                        .max())}
  print(f"max |JAX - torch gradient map| {gaps['maps']:.1e} (max |map| "
        f"{np.abs(maps).max():.1e}); max |ours - Quantus|, Quantus "
        f"explaining with our maps / with torch gradients:")
  bad = []
  for test in TESTS:
    ours = ours_run(s, test, check=True)
    for how, explain, atol in (("jax_maps", jax_maps(s), ATOL),
                               ("torch", torch_gradient, TORCH_ATOL)):
      peer = peer_run(s, test, explain=explain)
      gap = float(np.nanmax(np.abs(ours - peer))) if (
          ours.shape == peer.shape) else float("inf")
      gaps[f"{test}/{how}"] = gap
      bad += [] if gap <= atol else [f"{test}/{how}"]
    print(f"  {test:13s}{gaps[test + '/jax_maps']:9.1e} (ATOL {ATOL:g})"
          f"{gaps[test + '/torch']:9.1e} (ATOL {TORCH_ATOL:g})")
  if bad:
    sys.exit(f"scores differ from Quantus's in {bad}: no timings printed")
  return gaps


def passes(s: Setup, test: str) -> int:
  """The gradient passes (one image through the model and back) a test
  needs: every model it explains times the images (times the samples)."""
  n, layers = len(s.targets), len(s.steps)
  return {"bottom_up": (layers + 1) * n, "emprt": 2 * n,
          "smprt": (layers + 1) * OPTS.smprt_nr_samples * n,
          "random_logit": 2 * n}[test]


def timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def interleaved(s: Setup, rounds: int) -> dict[str, dict[str, float]]:
  """Best seconds of ours and the peer per test over interleaved rounds."""
  best = {t: {"ours": np.inf, "peer": np.inf} for t in TESTS}
  metrics = {t: peer_metric(t) for t in TESTS}
  for r in range(rounds):
    for t in TESTS:
      best[t]["ours"] = min(best[t]["ours"], timed(lambda: ours_run(s, t)))
      best[t]["peer"] = min(best[t]["peer"],
                            timed(lambda: peer_run(s, t, metrics[t])))
    print(f"round {r + 1}/{rounds}: " + ", ".join(
        f"{t} {b['ours']:.2f}/{b['peer']:.2f} s" for t, b in best.items()))
  return best


def bare_pass_time(s: Setup, rounds: int) -> float:
  """Best seconds of one jitted input gradient of the batch's classes (the
  images are independent: one gradient of the sum is each image's)."""
  def objective(params, v, t):
    logits = s.module.apply({"params": params}, v)
    return jnp.take_along_axis(logits, t[:, None], 1).sum()
  grad = jax.jit(jax.grad(objective, argnums=1))
  args = (s.variables["params"], jnp.asarray(s.images["image"]),
          jnp.asarray(s.targets, jnp.int32))
  jax.block_until_ready(grad(*args))
  return min(timed(lambda: jax.block_until_ready(grad(*args)))
             for _ in range(max(5, 5 * rounds)))


def table(s: Setup, best, bare: float) -> list[dict]:
  """Rows of the result; prints the table."""
  n = len(s.targets)
  print(f"{'test':13s}{'peer':>16s}{'ours img/s':>11s}{'peer img/s':>11s}"
        f"{'ours/peer':>10s}{'passes':>8s}{'ours p/s':>10s}{'bare p/s':>10s}"
        f"{'ours/bare':>10s}")
  rows = []
  for t in TESTS:
    ours, peer, p = best[t]["ours"], best[t]["peer"], passes(s, t)
    row = {"test": t, "peer": PEER[t], "ours_images_per_s": n / ours,
           "peer_images_per_s": n / peer, "ours_over_peer": peer / ours,
           "passes": p, "ours_passes_per_s": p / ours,
           "bare_passes_per_s": n / bare, "ours_over_bare": bare * p / n
           / ours, "ours_s": ours, "peer_s": peer}
    rows.append(row)
    print(f"{t:13s}{PEER[t]:>16s}{row['ours_images_per_s']:11.1f}"
          f"{row['peer_images_per_s']:11.1f}{row['ours_over_peer']:9.2f}x"
          f"{p:8d}{row['ours_passes_per_s']:10.0f}"
          f"{row['bare_passes_per_s']:10.0f}{row['ours_over_bare']:10.2f}")
  print("ours/peer: our speed over Quantus's (peer s / ours s); passes: the "
        "gradient passes the test needs; bare: one jitted jax.grad of the "
        f"same model on the batch of {n}; ours/bare: our passes/s over its")
  return rows


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--images", type=int, default=64)
  parser.add_argument("--width", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--quick", action="store_true",
                      help="8 images, width 8")
  parser.add_argument("--out", help="write the results as JSON here")
  args = parser.parse_args()
  n, width = (8, 8) if args.quick else (args.images, args.width)
  start = time.perf_counter()
  s = Setup(n, width)
  print(f"{n} random images {SIZE}x{SIZE}x3, SmallCNN width {width}, "
        f"layers {'+'.join(s.names)}; JAX {jax.__version__} on "
        f"{jax.devices()[0].platform}; torch {torch.__version__} on CPU "
        f"({torch.get_num_threads()} threads); Quantus {quantus.__version__}; "
        f"sMPRT {OPTS.smprt_nr_samples} samples")
  gaps = check(s)
  best = interleaved(s, args.rounds)
  rows = table(s, best, bare_pass_time(s, args.rounds))
  seconds = time.perf_counter() - start
  print(f"total {seconds:.0f} s; load average {os.getloadavg()}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"images": n, "width": width, "rounds": args.rounds,
                 "versions": [jax.__version__, torch.__version__,
                              quantus.__version__], "max_abs_gap": gaps,
                 "rows": rows, "seconds": seconds,
                 "load_average_end": os.getloadavg()}, f, indent=1)


if __name__ == "__main__":
  main()
