"""`RoarToy`: the synthetic toy dataset of `synthetic.py` as TFDS.

The images with their ground-truth masks, so that the toy data can be read
through TFDS like every other dataset. Keyed by the generator's parameters.
"""

import dataclasses
import json
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

from roar_jax.data import offline_builder
from roar_jax.data import synthetic


@dataclasses.dataclass(eq=False)
class ToyConfig(tfds.core.BuilderConfig):
  """The toy generator's parameters, as JSON (see synthetic.TOY_DEFAULTS)."""
  params_json: str = "{}"


class RoarToy(offline_builder.OfflineBuilder):
  """The synthetic toy images with their ground-truth masks."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  @property
  def _params(self) -> dict[str, Any]:
    return json.loads(self.builder_config.params_json)

  def _info(self) -> tfds.core.DatasetInfo:
    p = self._params
    size = int(p["image_size"])
    return self.dataset_info_from_configs(
        description="Synthetic toy images: a class pattern on noise.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(
                shape=(size, size, 3), dtype=np.uint8,
                encoding=tfds.features.Encoding.BYTES),
            "label": tfds.features.ClassLabel(
                num_classes=int(p["num_classes"])),
            "index": tfds.features.Scalar(np.int64),
            "mask": tfds.features.Tensor(
                shape=(size, size), dtype=np.bool_,
                encoding=tfds.features.Encoding.BYTES),
        }),
        supervised_keys=("image", "label"),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split)
            for split in ("train", "test")}

  def _generate_examples(self, split: str):
    images, labels, masks = synthetic.make_toy_split(self._params, split)
    for i in range(len(images)):
      yield offline_builder.order_key(i, len(images)), {
          "image": images[i], "label": int(labels[i]), "index": i,
          "mask": masks[i]}


def toy_config(toy: Mapping[str, Any] | None) -> ToyConfig:
  """The builder config of a toy dataset (name keyed by its parameters)."""
  params = synthetic.toy_params(toy)
  return ToyConfig(name=f"toy_{offline_builder.input_fingerprint(params)}",
                   params_json=json.dumps(params, sort_keys=True))


def prepare_toy(toy: Mapping[str, Any] | None,
                data_dir: str | None = None) -> str:
  """Writes the configured toy dataset (once) as TFDS; returns its directory."""
  return offline_builder.prepare(RoarToy, toy_config(toy), data_dir)
