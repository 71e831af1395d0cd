"""Datasets: sources, offline TFDS builders, input pipelines, degradation,
the rank store and the degraded-dataset writer.

The names below are imported on first use (PEP 562): most of these modules
import TensorFlow, which takes seconds, and `import roar_jax.data.names`
(what the config validation reads) must not pay for it.
"""

import importlib

_EXPORTS = {
    "birdsnap": ("BirdsnapBuilder", "birdsnap_source_builder"),
    "degradation": ("channel_mean", "degrade"),
    "degraded": ("DegradedSource",),
    "errors": ("DataError",),
    "idx": ("prepare_idx", "read_idx"),
    "image_folder": ("prepare_image_folder",),
    "pipeline": ("channel_mean_std", "eval_iterator", "num_eval_batches",
                 "train_iterator"),
    "preprocess": ("denormalize", "eval_geometry", "normalize"),
    "rank_store": ("RankStore",),
    "road_fill": ("noisy_linear_fill",),
    "source_protocol": ("ArraySource", "DatasetInfo", "Source",
                        "process_slice"),
    "sources": ("KNOWN_DATASETS", "DirectorySource", "TfdsSource",
                "get_source", "prepare"),
    "synthetic": ("make_synthetic_linear", "make_toy", "toy_masks",
                  "toy_source"),
    "toy_builder": ("prepare_toy",),
    "writer": ("is_complete", "read_dataset", "write_dataset",
               "write_metadata", "write_shards"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items()
              for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
  if name not in _MODULE_OF:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"),
                  name)
  globals()[name] = value  # Later lookups skip this function.
  return value


def __dir__():
  return sorted(set(globals()) | set(__all__))
