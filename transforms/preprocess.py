"""Each extractor's own input preprocessing. Neither changes its input array."""

import numpy as np
from keras.applications import inception_v3


def hub_input(pixels):
    """Maps uint8 RGB [N, 299, 299, 3] in [0, 255] to float32 in [0, 1], the TF Hub contract."""
    return np.asarray(pixels, dtype=np.float32) / np.float32(255.0)


def keras_input(pixels):
    """Maps uint8 RGB [N, 299, 299, 3] in [0, 255] to float32 in [-1, 1] for Keras InceptionV3.

    Keras' preprocess_input rescales a float array in place and returns the same object,
    so it gets a fresh float32 copy: the caller's array, possibly shared with the hub
    extractor, is never touched.
    """
    copy = np.array(pixels, dtype=np.float32, copy=True)
    return inception_v3.preprocess_input(copy)


def keras_input_unit_range(pixels):
    """Maps uint8 RGB to float32 in [0, 1]: the wrong range for Keras, kept to measure its effect."""
    return hub_input(pixels)
