"""Saliency speed: shared noise ensembles vs one at a time, the original code's
loop, and Captum, side by side in one run.

For the small CNN and ResNet-18 (CIFAR stem) at 32x32, batch 32, J = 15, it
prints images/s per task and these throughput ratios (> 1: ours is faster):

  (a) one sg. ensemble alone / all three ensembles in one call
      (cost of asking for all three; target: all three take at most 1.3x)
  (b) all three ensembles in one call / the original ROAR code's way: one
      image at a time, noise samples in a Python loop, SG, SG-SQ and VarGrad
      each computed on its own (target >= 3)
  (c) vs Captum (when torch and captum are installed): all three ensembles /
      NoiseTunnel smoothgrad + smoothgrad_sq + vargrad (three calls), target
      >= 3; integrated gradients (25 steps) / Captum IntegratedGradients,
      target >= 1. Also the plain per-gradient throughput of both (one batched
      input gradient), so that sharing and raw speed can be told apart.

The torch models are the same architectures with the Flax weights copied in;
the script checks that logits and input gradients agree before timing.
Tasks are timed in interleaved rounds (median, or --stat=min, of --repeats) so
that load on a shared machine affects all of them alike.

  pip install torch==2.13.0 captum   # optional, for (c); CPU build
  python bench/saliency.py [--models cnn,resnet18] [--repeats 3]
"""

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from roar_jax import models
from roar_jax.saliency import explainable
from roar_jax.saliency import explaining as api
from roar_jax.saliency import inputs as inputs_lib
from roar_jax.saliency import lowering
# pylint: enable=g-import-not-at-top,wrong-import-position

ENSEMBLES = ("sg.gradient", "sg_sq.gradient", "var.gradient")


# ---------------------------------------------------------------------------
# Models: Flax, and the same function in torch.


def _randomize_batch_norm(variables, rng):
  """BatchNorm with non-trivial statistics and scales (zero-init undone)."""
  def visit(tree, stats):
    for name, sub in tree.items():
      if isinstance(sub, dict) and "scale" in sub and "bias" in sub:
        sub["scale"] = rng.uniform(0.3, 0.8, sub["scale"].shape).astype(
            np.float32)
        sub["bias"] = rng.normal(0, 0.05, sub["bias"].shape).astype(
            np.float32)
        stats[name]["mean"] = rng.normal(0, 0.1, stats[name]["mean"].shape
                                         ).astype(np.float32)
        stats[name]["var"] = rng.uniform(0.5, 1.5, stats[name]["var"].shape
                                         ).astype(np.float32)
      elif isinstance(sub, dict) and name in stats:
        visit(sub, stats[name])
  variables = jax.tree.map(np.asarray, variables)
  variables = {k: _to_dict(v) for k, v in variables.items()}
  if "batch_stats" in variables:
    visit(variables["params"], variables["batch_stats"])
  return variables


def _to_dict(tree):
  if hasattr(tree, "items"):
    return {k: _to_dict(v) for k, v in tree.items()}
  return np.array(tree)


def build_flax(name: str):
  if name == "cnn":
    module = models.SmallCNN(10)
  else:
    module = models.ResNet18(10, stem="cifar")
  variables = jax.jit(module.init)(jax.random.key(0),
                                   jnp.zeros((1, 32, 32, 3)))
  variables = _randomize_batch_norm(variables, np.random.default_rng(0))
  return module, variables


def build_torch(name: str, variables):
  """The same network in torch (NCHW), with the Flax weights copied in."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn as tnn  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  p = variables["params"]
  conv_w = lambda k: torch.tensor(np.transpose(np.asarray(k), (3, 2, 0, 1)))

  def set_conv(conv, leaf):
    conv.weight.data = conv_w(leaf["kernel"])
    if "bias" in leaf:
      conv.bias.data = torch.tensor(np.asarray(leaf["bias"]))

  def set_dense(dense, leaf):
    dense.weight.data = torch.tensor(np.asarray(leaf["kernel"]).T.copy())
    dense.bias.data = torch.tensor(np.asarray(leaf["bias"]))

  def set_bn(bn, leaf, stats):
    bn.weight.data = torch.tensor(np.asarray(leaf["scale"]))
    bn.bias.data = torch.tensor(np.asarray(leaf["bias"]))
    bn.running_mean.data = torch.tensor(np.asarray(stats["mean"]))
    bn.running_var.data = torch.tensor(np.asarray(stats["var"]))

  if name == "cnn":
    class SmallCNN(tnn.Module):

      def __init__(self):
        super().__init__()
        self.convs = tnn.ModuleList([tnn.Conv2d(i, o, 3, padding=1)
                                     for i, o in ((3, 32), (32, 64),
                                                  (64, 128))])
        self.fc = tnn.Linear(128, 10)

      def forward(self, x):
        for conv in self.convs:
          x = F.max_pool2d(F.relu(conv(x)), 2)
        return self.fc(x.mean(dim=(2, 3)))

    net = SmallCNN()
    for conv, n in zip(net.convs, ("conv1", "conv2", "conv3")):
      set_conv(conv, p[n])
    set_dense(net.fc, p["logits"])
  else:
    s = variables["batch_stats"]

    class Block(tnn.Module):

      def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(cout, eps=1e-5)
        self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(cout, eps=1e-5)
        self.proj = None
        if stride != 1 or cin != cout:
          self.proj = tnn.Sequential(
              tnn.Conv2d(cin, cout, 1, stride, 0, bias=False),
              tnn.BatchNorm2d(cout, eps=1e-5))

      def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu((x if self.proj is None else self.proj(x)) + y)

    class ResNet18(tnn.Module):

      def __init__(self):
        super().__init__()
        self.stem = tnn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.stem_bn = tnn.BatchNorm2d(64, eps=1e-5)
        blocks, cin = [], 64
        for i in range(4):
          for j in range(2):
            cout = 64 * 2**i
            blocks.append(Block(cin, cout, 2 if i > 0 and j == 0 else 1))
            cin = cout
        self.blocks = tnn.ModuleList(blocks)
        self.fc = tnn.Linear(512, 10)

      def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        for block in self.blocks:
          x = block(x)
        return self.fc(x.mean(dim=(2, 3)))

    net = ResNet18()
    set_conv(net.stem, p["stem_conv"])
    set_bn(net.stem_bn, p["stem_bn"], s["stem_bn"])
    k = 0
    for i in range(4):
      for j in range(2):
        name_ = f"stage{i + 1}_block{j + 1}"
        blk, bp, bs = net.blocks[k], p[name_], s[name_]
        set_conv(blk.conv1, bp["conv1"])
        set_bn(blk.bn1, bp["bn1"], bs["bn1"])
        set_conv(blk.conv2, bp["conv2"])
        set_bn(blk.bn2, bp["bn2"], bs["bn2"])
        if blk.proj is not None:
          set_conv(blk.proj[0], bp["proj_conv"])
          set_bn(blk.proj[1], bp["proj_bn"], bs["proj_bn"])
        k += 1
    set_dense(net.fc, p["logits"])
  net.eval()
  for q in net.parameters():
    q.requires_grad_(False)
  return net


# ---------------------------------------------------------------------------
# The tasks.


def naive_roar_way(grad1, logits1, images, num_samples, noise_scale, seed=0):
  """The original code's loop: per image, per method, per noise sample.

  One image at a time (batch 1), the predicted class from its own forward
  pass, noise samples in a Python loop, and SG, SG-SQ and VarGrad each
  computed on its own (their own noise, their own J gradients).
  """
  rng = np.random.default_rng(seed)
  out = {m: [] for m in ENSEMBLES}
  for x in images:
    x = x[None]
    sigma = noise_scale * (x.max() - x.min())
    for method in ENSEMBLES:
      target = np.asarray(jnp.argmax(logits1(x), axis=-1)).astype(np.int32)
      grads = []
      for _ in range(num_samples):
        noisy = x + rng.normal(0, sigma, x.shape).astype(np.float32)
        grads.append(np.asarray(grad1(noisy, target)))
      grads = np.stack(grads)
      if method == "sg.gradient":
        out[method].append(grads.mean(0))
      elif method == "sg_sq.gradient":
        out[method].append((grads**2).mean(0))
      else:
        out[method].append(grads.var(0))
  return out


def _timed(fn):
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def run_model(name: str, args, have_torch: bool) -> dict:
  module, variables = build_flax(name)
  model = explainable(module, variables)
  batch, j = args.batch, args.num_samples
  rng = np.random.default_rng(1)
  x = rng.uniform(0, 1, (batch, 32, 32, 3)).astype(np.float32)
  key = jax.random.key(0)
  targets = np.asarray(jnp.argmax(jax.jit(module.apply)(variables, x), -1))
  opts = dict(num_samples=j, noise_scale=0.15)
  ready = jax.block_until_ready

  # Ours. Each task computes what its name says for the whole batch.
  tasks = {
      "ours: plain gradient (batch 32, one call)": (batch, lambda: ready(
          api.explain(model, x, method="gradient", key=key, target=targets,
                      chunk_size=batch))),
      "ours: sg.gradient alone": (batch, lambda: ready(api.explain_all(
          model, x, methods=ENSEMBLES[:1], key=key, **opts))),
      "ours: sg + sg_sq + var (one call)": (batch, lambda: ready(
          api.explain_all(model, x, methods=ENSEMBLES, key=key, **opts))),
      "ours: integrated_gradients (25 steps)": (batch, lambda: ready(
          api.explain(model, x, method="integrated_gradients", key=key,
                      ig_steps=25, baseline=0.0))),
  }
  # The original code's way, with the same jitted gradient (batch 1).
  logits_fn = lowering.fast_pooling(model.logits)
  grad1 = jax.jit(lambda xi, t: inputs_lib.target_gradient(logits_fn, xi, t))
  logits1 = jax.jit(model.logits)
  naive_n = min(batch, args.naive_images or (32 if name == "cnn" else 8))
  tasks[f"original ROAR way (timed on {naive_n} images)"] = (
      naive_n, lambda: naive_roar_way(grad1, logits1, x[:naive_n], j, 0.15))

  checks = {}
  if have_torch:
    import torch  # pylint: disable=g-import-not-at-top
    from captum import attr  # pylint: disable=g-import-not-at-top
    net = build_torch(name, variables)
    xt = torch.tensor(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))
    tt = torch.tensor(targets.astype(np.int64))
    with torch.no_grad():
      tl = net(xt).numpy()
    fl = np.asarray(module.apply(variables, x))
    checks["logits max-abs error / max-abs"] = float(
        np.abs(tl - fl).max() / np.abs(fl).max())
    sal = attr.Saliency(net)
    tg = sal.attribute(xt, target=tt, abs=False).numpy().transpose(0, 2, 3, 1)
    fg = np.asarray(api.explain(model, x, method="gradient", key=key,
                                target=targets))
    err = (np.abs(tg - fg).reshape(batch, -1).max(1) /
           np.abs(fg).reshape(batch, -1).max(1))
    checks["input gradient max-abs error / max-abs, median image"] = float(
        np.median(err))
    # A ReLU input within rounding of 0 can switch sides between frameworks
    # and change one image's gradient locally; count such images.
    checks["images with input-gradient error > 1e-4"] = int(
        (err > 1e-4).sum())
    nt = attr.NoiseTunnel(sal)
    # Captum's stdevs is absolute: 0.15 x the images' mean value range.
    stdev = float(0.15 * np.mean(x.max(axis=(1, 2, 3)) -
                                 x.min(axis=(1, 2, 3))))
    ig = attr.IntegratedGradients(net)

    def captum_three():
      for kind in ("smoothgrad", "smoothgrad_sq", "vargrad"):
        nt.attribute(xt, nt_type=kind, nt_samples=j, stdevs=stdev, target=tt,
                     abs=False)

    tasks.update({
        "captum: Saliency (batch 32)": (batch, lambda: sal.attribute(
            xt, target=tt, abs=False)),
        "captum: NoiseTunnel sg + sg_sq + vargrad (3 calls)": (
            batch, captum_three),
        "captum: IntegratedGradients (25 steps)": (batch, lambda: ig.attribute(
            xt, target=tt, n_steps=25)),
    })

  # Warm up (compiles), then interleaved rounds.
  for _, fn in tasks.values():
    fn()
  times = {t: [] for t in tasks}
  for _ in range(args.repeats):
    for task, (_, fn) in tasks.items():
      times[task].append(_timed(fn))
  stat = np.min if args.stat == "min" else np.median
  rate = {t: tasks[t][0] / float(stat(times[t])) for t in tasks}
  return {"rate": rate, "checks": checks}


def ratios(rate: dict) -> dict:
  get = lambda prefix: next(v for k, v in rate.items() if k.startswith(prefix))
  out = {
      "(a) all three in one call vs sg alone (time ratio, target <= 1.3)":
          get("ours: sg.gradient alone") / get("ours: sg + sg_sq + var"),
      "(b) all three vs original ROAR way (target >= 3)":
          get("ours: sg + sg_sq + var") / get("original ROAR way"),
  }
  if any(k.startswith("captum") for k in rate):
    out.update({
        "(c) all three vs Captum NoiseTunnel x3 (target >= 3)":
            get("ours: sg + sg_sq + var") / get("captum: NoiseTunnel"),
        "(c) integrated gradients vs Captum (target >= 1)":
            get("ours: integrated_gradients") /
            get("captum: IntegratedGradients"),
        "raw: one batched input gradient, JAX / torch":
            get("ours: plain gradient (") / get("captum: Saliency"),
    })
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default="cnn,resnet18")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--num-samples", type=int, default=15)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--naive-images", type=int, default=0,
                      help="images the original-code loop is timed on "
                      "(default 32 for the CNN, 8 for ResNet-18; its "
                      "images/s does not depend on the count)")
  parser.add_argument("--stat", choices=("median", "min"), default="median",
                      help="per-task time over the rounds (min is the "
                      "better estimate on a busy machine)")
  parser.add_argument("--no-torch", action="store_true")
  parser.add_argument("--json", default="", help="also write results here")
  args = parser.parse_args()

  have_torch = False
  if not args.no_torch:
    try:
      import captum  # pylint: disable=g-import-not-at-top,unused-import
      import torch  # pylint: disable=g-import-not-at-top
      have_torch = True
    except ImportError:
      print("torch/captum not installed: the Captum comparisons (c) are "
            "skipped (pip install torch==2.13.0 captum)")
  print(f"jax {jax.__version__} on {jax.default_backend()} "
        f"({os.cpu_count()} CPUs); batch {args.batch}, J = "
        f"{args.num_samples}, {args.stat} of {args.repeats} interleaved "
        "rounds"
        + (f"; torch {torch.__version__}, {torch.get_num_threads()} threads"
           if have_torch else ""))
  results = {}
  for name in args.models.split(","):
    load = os.getloadavg()[0]
    result = run_model(name, args, have_torch)
    # Torch's OpenMP threads slow down far more than XLA's under CPU
    # contention: read the Captum ratios with the machine's load beside them.
    result["load_average"] = [load, os.getloadavg()[0]]
    result["ratios"] = ratios(result["rate"])
    results[name] = result
    print(f"\n== {name} == (1-min load average {result['load_average'][0]:.1f}"
          f" at start, {result['load_average'][1]:.1f} at end, "
          f"{os.cpu_count()} CPUs)")
    for check, value in result["checks"].items():
      print(f"  check: {check}: {value:.2e}" if isinstance(value, float)
            else f"  check: {check}: {value}")
    for task, value in result["rate"].items():
      print(f"  {task:58s} {value:9.2f} img/s")
    for label, value in result["ratios"].items():
      print(f"  {label:66s} {value:6.2f}x")
    sys.stdout.flush()
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
