"""Datasets: sources, offline TFDS builders, input pipelines, degradation,
the rank store and the degraded-dataset writer."""

from roar_jax.data.birdsnap import BirdsnapBuilder, birdsnap_source_builder
from roar_jax.data.degradation import channel_mean, degrade, noisy_linear_fill
from roar_jax.data.degraded import DegradedSource
from roar_jax.data.errors import DataError
from roar_jax.data.idx import prepare_idx, read_idx
from roar_jax.data.image_folder import prepare_image_folder
from roar_jax.data.pipeline import (channel_mean_std, eval_iterator,
                                    num_eval_batches, train_iterator)
from roar_jax.data.preprocess import denormalize, eval_geometry, normalize
from roar_jax.data.rank_store import RankStore
from roar_jax.data.source_protocol import (ArraySource, DatasetInfo, Source,
                                           process_slice)
from roar_jax.data.sources import (KNOWN_DATASETS, DirectorySource, TfdsSource,
                                   get_source, prepare)
from roar_jax.data.synthetic import (make_synthetic_linear, make_toy,
                                     toy_masks, toy_source)
from roar_jax.data.toy_builder import prepare_toy
from roar_jax.data.writer import (is_complete, read_dataset, write_dataset,
                                  write_metadata, write_shards)
