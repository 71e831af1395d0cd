"""Flax models. This package imports nothing else of the project, except that
`explainable` wraps a model in the pure-JAX `saliency.Model` dataclass."""

from roar_jax.models.registry import MODELS, get_model
from roar_jax.models.resnet import ResNet, ResNet18, ResNet50
from roar_jax.models.small_cnn import SanityCNN, SanityMLP, SmallCNN
from roar_jax.models.explainable import explainable
