"""Flax models. This package imports nothing else of the project
(`saliency.explainable` wraps a model for the saliency estimators)."""

from roar_jax.models.fast_cnn import FastCNN
from roar_jax.models.registry import MODELS, get_model, register
from roar_jax.models.resnet import ResNet, ResNet18, ResNet50
from roar_jax.models.small_cnn import SanityCNN, SanityMLP, SmallCNN
