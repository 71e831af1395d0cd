"""ROAR/KAR on maps from Captum: saliency maps of a torch model, written in
the layout `--config.explain.maps` reads (roar_jax/benchmark/roar/
external_maps.py), then benchmarked like the project's own.

The torch model is the twin of a finished toy run's base model
(bench/torch_twins.py: the same SmallCNN, the Flax weights copied in), so
no training happens here. For every train and test image it writes

  OUT/captum_saliency/<split>.npz    Captum Saliency (the plain gradient)
  OUT/captum_ig/<split>.npz          Captum IntegratedGradients (25 steps,
                                     black-image baseline)

each with `maps` float32 [N, H, W, C] (NHWC, as the images) and `index` (the
images' positions in their split). The targets are the model's predicted
classes, as the project's own maps use. It also checks that Captum's
Saliency equals the project's `gradient` maps of the same images.

  python -m roar_jax.main --config=toy --workdir=/tmp/roar_toy --mode=train
  pip install torch captum   # the bench extra: pip install -e .[bench]
  python bench/external_maps_captum.py --workdir=/tmp/roar_toy \
      --out=/tmp/captum_maps
  python -m roar_jax.main --config=toy --workdir=/tmp/roar_toy --mode=roar \
      --config.explain.maps=/tmp/captum_maps \
      --config.explain.estimators="('captum_saliency','captum_ig','random')"
"""

import argparse
import os
import sys
import time

import numpy as np
import torch
from captum import attr

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import roar_jax
from bench import torch_twins
from roar_jax import saliency
from roar_jax.data import pipeline
# pylint: enable=g-import-not-at-top,wrong-import-position

METHODS = ("captum_saliency", "captum_ig")


def captum_maps(net, images: np.ndarray, black: np.ndarray,
                ig_steps: int) -> dict[str, np.ndarray]:
  """Captum's maps of a batch, NHWC.

  Args:
    net: the torch model (NCHW inputs, in eval mode).
    images: float32 [B, H, W, C] in the model's input space.
    black: float32 [C], the black image in that space (IG's baseline).
    ig_steps: integrated gradients' steps.

  Returns:
    {method: float32 [B, H, W, C]}.
  """
  x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  with torch.no_grad():
    target = net(x).argmax(dim=1)
  baseline = torch.from_numpy(black).reshape(1, -1, 1, 1).expand_as(x)
  out = {
      "captum_saliency": attr.Saliency(net).attribute(
          x.clone().requires_grad_(), target=target, abs=False),
      "captum_ig": attr.IntegratedGradients(net).attribute(
          x.clone().requires_grad_(), baselines=baseline.contiguous(),
          target=target, n_steps=ig_steps),
  }
  return {k: v.detach().numpy().transpose(0, 2, 3, 1).astype(np.float32)
          for k, v in out.items()}


def write_split(run, net, split: str, out: str, batch_size: int,
                ig_steps: int) -> float:
  """Writes OUT/<method>/<split>.npz; returns the largest difference
  between Captum's Saliency and the project's gradient maps."""
  black = np.asarray(saliency.black_image(
      np.asarray(run.config.data.mean), np.asarray(run.config.data.std)),
                     np.float32).reshape(-1)
  maps = {m: [] for m in METHODS}
  index, worst = [], 0.0
  for batch in pipeline.eval_iterator(run.source, run.config.data, split,
                                      global_batch_size=batch_size):
    real = batch["mask"] > 0
    images = np.asarray(batch["image"][real], np.float32)
    for m, v in captum_maps(net, images, black, ig_steps).items():
      maps[m].append(v)
    ours = np.asarray(saliency.explain(run.model, images, method="gradient"))
    worst = max(worst, float(np.abs(ours - maps["captum_saliency"][-1]).max()))
    index.append(batch["index"][real])
  for m in METHODS:
    os.makedirs(os.path.join(out, m), exist_ok=True)
    np.savez(os.path.join(out, m, f"{split}.npz"),
             maps=np.concatenate(maps[m]), index=np.concatenate(index))
  return worst


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True,
                      help="a toy run where --mode=train finished")
  parser.add_argument("--out", required=True, help="the maps folder")
  parser.add_argument("--batch_size", type=int, default=200)
  parser.add_argument("--ig_steps", type=int, default=25)
  args = parser.parse_args()
  run = roar_jax.load(args.workdir)
  if run.config.model.name != "small_cnn":
    sys.exit(f"{args.workdir}: a small_cnn run is needed (the torch twin), "
             f"not {run.config.model.name!r}")
  net = torch_twins.small_cnn(run.variables["params"])
  net.eval()
  for p in net.parameters():
    p.requires_grad_(False)
  for split in ("test", "train"):
    start = time.time()
    worst = write_split(run, net, split, args.out, args.batch_size,
                        args.ig_steps)
    print(f"{split}: {run.source.info.num_examples[split]} images, "
          f"{time.time() - start:.0f} s; Captum Saliency vs the project's "
          f"gradient: max |difference| {worst:.2e}")
  print(f"maps: {args.out}/{{{','.join(METHODS)}}}/{{train,test}}.npz")


if __name__ == "__main__":
  main()
