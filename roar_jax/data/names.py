"""The names a config may give its data, importable without TensorFlow.

`config/validation.py` checks a config against these before anything heavy
is imported, so that a typo in a field fails in a second; `sources.py` and
`preprocess.py` re-export them.
"""

# Datasets `config.data.name` may name (besides a folder in `data.path`).
KNOWN_DATASETS = ("toy", "cifar10", "fashion_mnist", "imagenet2012", "food101",
                  "birdsnap")
# Training augmentations of `config.data.augment` (`preprocess.py`).
AUGMENTATIONS = ("none", "crop_flip", "inception")
