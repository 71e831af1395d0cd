"""The names a config may give its data, importable without TensorFlow.

`config/validation.py` checks a config against these before anything heavy
is imported, so that a typo in a field fails in a second; `sources.py` and
`preprocess.py` re-export them.
"""

# Datasets `config.data.name` may name (besides a folder in `data.path`).
KNOWN_DATASETS = ("toy", "cifar10", "fashion_mnist", "imagenet2012", "food101",
                  "birdsnap")
# Channels of the known datasets' images, so that `data.mean`, `data.std`
# and `roar.fill_value` are checked at start-up (a folder of one's own is
# known only once read).
CHANNELS = {"toy": 3, "cifar10": 3, "fashion_mnist": 1, "imagenet2012": 3,
            "food101": 3, "birdsnap": 3}
# Training augmentations of `config.data.augment` (`preprocess.py`).
AUGMENTATIONS = ("none", "crop_flip", "inception")
