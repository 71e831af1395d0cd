"""The estimators' maps of test images, for the metrics that score maps.

Metrics that declare `needs=('maps',)` (infidelity, sensitivity,
faithfulness correlation) read the raw saliency maps, not the rank store's
removal order: they are computed here, batch by batch, with the explain
stage's estimator options and model (`explain.explainable`,
`explain.explain_options`). A name has maps only when it names a saliency
method as it is (`estimator_names.maps_method(e) == e`): `sq.` and `blur.`
names rank transformed scores, and the controls `oracle` and
`random_smooth.<e>` and external maps have no maps of this model; a metric
that needs maps skips them (their records have no entry for it).
"""

from typing import Callable, Optional

import jax
import numpy as np

from roar_jax import saliency
from roar_jax.benchmark.roar import estimator_names as names
from roar_jax.benchmark.roar import explain as explain_lib
from roar_jax.benchmark.roar import external_maps

# The stream of the maps' random draws (noise ensembles, RISE, LIME):
# distinct from the explain stage's (7), so a metric's maps are fresh draws.
_KEY_STREAM = 11


def has_maps(config, estimator: str) -> bool:
  """Whether `estimator`'s maps can be computed here (see the module doc)."""
  external = set(external_maps.methods(config))
  return (names.maps_method(estimator) == estimator
          and estimator not in external
          and estimator in saliency.available_methods())


def maps_fn(config, model: saliency.Model, source) -> Callable:
  """(estimator, images [B, H, W, C] in the model's input space, targets [B],
  indices [B]) -> float32 maps [B, H, W, C].

  Args:
    config: the experiment config (`config.explain`, `config.seed`).
    model: the base model as the estimators see it
      (`explain.explainable`).
    source: the dataset (DeepSHAP's and Expected Gradients' references come
      from its training split).
  """
  options = explain_lib.explain_options(config)
  references: list[Optional[np.ndarray]] = []
  key = jax.random.fold_in(jax.random.key(config.seed), _KEY_STREAM)

  def fn(estimator, images, targets, indices):
    opts = dict(options)
    if saliency.reads_references(estimator):
      if not references:
        references.append(explain_lib.deepshap_references(config, source))
      opts["references"] = references[0]
    return np.asarray(saliency.explain(
        model, images, method=estimator, key=key, target=np.asarray(targets),
        indices=np.asarray(indices), **opts), np.float32)

  return fn
