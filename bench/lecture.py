"""The lecture's estimators: images/s of ours against Captum's and PAIR's.

For the small CNN and ResNet-18 (CIFAR stem) at 32x32, batch 32, it prints
images/s of each method, ours and the peer's with the same sample counts,
and the ratio (> 1: ours is faster), measured side by side in one run:

  deeplift      vs captum.attr.DeepLift
  occlusion     vs captum.attr.Occlusion (same window and stride)
  lime          vs captum.attr.Lime (ridge surrogate, same samples)
  kernel_shap   vs captum.attr.KernelShap (same samples)
  xrai          vs PAIR's saliency.core.XRAI (same IG steps), on the torch
                model's gradients
  rise          ours only (no peer implementation)

Both sides get the same superpixels (SLIC, computed once, passed as
`segments=` and as Captum's feature_mask) and the same zero baseline; XRAI
segments on both sides (Felzenszwalb, PAIR's settings). Captum batches its
perturbations (`perturbations_per_eval`) and PAIR its IG steps (`batch_size`)
as far as the budget below allows, so neither is run one evaluation at a time.
Peers explain one image per call (Lime and KernelShap take one example at a
time); they run on --peer-images images and are scaled to images/s.

  pip install torch captum saliency   # CPU builds
  python bench/lecture.py [--models cnn,resnet18] [--samples 200]
"""

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
# bench/saliency.py must not shadow PAIR's `saliency` package: the script's
# own folder leaves the path (bench/saliency.py is loaded by file below).
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

# pylint: disable=g-import-not-at-top,wrong-import-position
from roar_jax import saliency
from roar_jax.saliency import segments as segments_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

METHODS = ("deeplift", "occlusion", "lime", "kernel_shap", "xrai", "rise")


def _bench_saliency():
  """bench/saliency.py's models (Flax, and torch with the same weights)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path = os.path.join(_HERE, "saliency.py")
  spec = importlib.util.spec_from_file_location("bench_saliency", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _time(fn, repeats: int) -> float:
  fn()  # Compile / warm up.
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def ours(model, x, targets, segments, args):
  # baseline=0.0: the zero baseline Captum's methods are given below.
  opts = dict(target=targets, key=jax.random.key(0), segments=segments,
              baseline=0.0, lime_samples=args.samples,
              shap_samples=args.samples, rise_masks=args.samples,
              occlusion_window=args.window, occlusion_stride=args.window // 2,
              xrai_steps=args.xrai_steps)
  ready = lambda a: jax.block_until_ready(a)
  out = {}
  for m in METHODS:
    seconds = _time(lambda m=m: ready(saliency.explain(model, x, method=m,
                                                       **opts)), args.repeats)
    out[m] = len(x) / seconds
  return out


def peers(net, x, targets, segments, args):
  """Images/s of Captum's and PAIR's methods on the first --peer-images."""
  import torch  # pylint: disable=g-import-not-at-top
  from captum import attr  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from captum._utils.models import linear_model
  n = args.peer_images
  xt = torch.tensor(np.transpose(x[:n], (0, 3, 1, 2)).copy())
  tt = torch.tensor(targets[:n].astype(np.int64))
  masks = torch.tensor(segments[:n].astype(np.int64))[:, None].expand(
      -1, 3, -1, -1).contiguous()
  per_eval = args.peer_batch
  out = {}

  def per_image(explainer, **kw):
    def run():
      for i in range(n):
        explainer.attribute(xt[i:i + 1], target=int(tt[i]),
                            feature_mask=masks[i:i + 1], baselines=0.0,
                            n_samples=args.samples,
                            perturbations_per_eval=per_eval, **kw)
    return run

  tasks = {
      "deeplift": lambda: attr.DeepLift(net).attribute(xt, baselines=0.0,
                                                       target=tt),
      "occlusion": lambda: attr.Occlusion(net).attribute(
          xt, sliding_window_shapes=(3, args.window, args.window),
          strides=(3, args.window // 2, args.window // 2), baselines=0.0,
          target=tt, perturbations_per_eval=per_eval),
      "lime": per_image(attr.Lime(
          net, interpretable_model=linear_model.SkLearnRidge(alpha=1.0))),
      "kernel_shap": per_image(attr.KernelShap(net)),
  }
  for m, fn in tasks.items():
    out[m] = n / _time(fn, args.repeats)
  try:
    import saliency.core as pair  # pylint: disable=g-import-not-at-top
  except ImportError:
    return out

  def call_model(images, call_model_args=None, expected_keys=None):
    del expected_keys
    t = torch.tensor(np.transpose(images, (0, 3, 1, 2)).astype(np.float32),
                     requires_grad=True)
    logit = net(t)[:, call_model_args["target"]].sum()
    grad, = torch.autograd.grad(logit, t)
    return {pair.base.INPUT_OUTPUT_GRADIENTS:
                np.transpose(grad.numpy(), (0, 2, 3, 1))}

  def xrai():
    xr = pair.XRAI()
    params = pair.XRAIParameters(steps=args.xrai_steps)
    for i in range(n):
      xr.GetMask(x[i], call_model, call_model_args={"target": int(targets[i])},
                 extra_parameters=params, batch_size=args.xrai_steps)

  out["xrai"] = n / _time(xrai, max(1, args.repeats - 1))
  return out


def run_model(name: str, args, bench) -> None:
  module, variables = bench.build_flax(name)
  model = saliency.explainable(module, variables)
  rng = np.random.default_rng(1)
  x = rng.normal(size=(args.batch, 32, 32, 3)).astype(np.float32)
  x = np.clip(x * 0.3 + np.linspace(-1, 1, 32)[None, :, None, None], -2, 2)
  x = x.astype(np.float32)
  targets = np.asarray(jnp.argmax(model.logits(x), -1)).astype(np.int32)
  opts = saliency.Options(num_segments=args.segments)
  segs = segments_lib.superpixels(x, opts, {})["segments"]
  mine = ours(model, x, targets, segs, args)
  try:
    net = bench.build_torch(name, variables)
    theirs = peers(net, x, targets, segs, args)
  except ImportError as e:
    print(f"  (peers skipped: {e})")
    theirs = {}
  print(f"\n{name}, load {os.getloadavg()[0]:.1f}, batch {args.batch}, "
        f"32x32, {args.samples} samples, "
        f"window {args.window}, XRAI {args.xrai_steps} IG steps")
  print(f"  {'method':<12} {'ours img/s':>11} {'peer img/s':>11} "
        f"{'ratio':>7}")
  for m in METHODS:
    peer = theirs.get(m)
    ratio = f"{mine[m] / peer:7.1f}" if peer else "      -"
    peer_s = f"{peer:11.2f}" if peer else "          -"
    print(f"  {m:<12} {mine[m]:11.2f} {peer_s} {ratio}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="cnn,resnet18")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--samples", type=int, default=200,
                      help="LIME/KernelSHAP samples and RISE masks")
  parser.add_argument("--window", type=int, default=8)
  parser.add_argument("--segments", type=int, default=50)
  parser.add_argument("--xrai-steps", type=int, default=20)
  parser.add_argument("--peer-images", type=int, default=4)
  parser.add_argument("--peer-batch", type=int, default=64,
                      help="Captum's perturbations_per_eval")
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, load average "
        f"{os.getloadavg()[0]:.1f} (torch slows down more than XLA under "
        "load: quote quiet-machine figures)")
  bench = _bench_saliency()
  for name in args.models.split(","):
    run_model(name, args, bench)


if __name__ == "__main__":
  main()
