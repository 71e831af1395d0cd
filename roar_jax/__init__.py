"""roar_jax: does a saliency method find the pixels the model needs?"""

__version__ = "0.2.0"
