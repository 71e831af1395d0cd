"""roar_jax: does a saliency method find the pixels the model needs?"""

import os

# TensorFlow serves only tf.data here: keep its C++ start-up notices (oneDNN,
# CPU features) off the console of whoever imports the package.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "0.2.0"

from roar_jax.runs import Run, load, run_roar  # noqa: E402
