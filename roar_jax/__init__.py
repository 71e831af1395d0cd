"""roar_jax: does a saliency method find the pixels the model needs?"""
