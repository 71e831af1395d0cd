"""Saliency estimators, noise ensembles, controls, ranking and visualization.

Depends on JAX only (and scikit-image for superpixels): never on
roar_jax.data or roar_jax.training.
"""

from roar_jax.saliency import visualize
from roar_jax.saliency.visualize import plot_grid
from roar_jax.saliency.explainable import explainable
from roar_jax.saliency import expected_gradients  # Registers the method.
from roar_jax.saliency.explaining import available_methods, explain
from roar_jax.saliency.explaining import explain_all, gradient_passes
from roar_jax.saliency import gradcam_pp  # Registers the method.
from roar_jax.saliency.inputs import Inputs
from roar_jax.saliency.lowering import fast_pooling
from roar_jax.saliency import lrp  # Registers the lrp_* methods.
from roar_jax.saliency.model import Model, guided_relu
from roar_jax.saliency.options import Options, black_image
from roar_jax.saliency.ranking import rank
from roar_jax.saliency.registry import register
from roar_jax.saliency.registry import reads_references
from roar_jax.saliency.rescale import deeplift_logits
from roar_jax.saliency import blur_ig, guided_ig  # Registers both.
