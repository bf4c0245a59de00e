"""The offline fixture pair: Keras InceptionV3 weights drawn from a fixed seed, and a
TF Hub-format SavedModel exported from the same weights.

The real ImageNet models cannot be downloaded everywhere. The fixture pair has the
real models' architecture and contracts, so the whole pipeline runs and is tested on
it: with the same weights and average pooling the two extractors must agree to float32
round-off, and every difference the pipeline reports is a real difference of
configuration (pooling, input range, resizing).
"""

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from transforms.image_decode import IMAGE_SIZE
from transforms.models import file_sha256, saved_model_fingerprint

_LOGGER = logging.getLogger(__name__)

# Bump when the recipe below changes, so that stale cached pairs are not reused.
FIXTURE_VERSION = 1
DEFAULT_FIXTURE_SEED = 1234
KERAS_WEIGHTS_FILE = "keras_inception_v3_notop.weights.h5"
HUB_MODEL_FOLDER = "hub_inception_v3_feature_vector"
MANIFEST_FILE = "fixture.json"

# A build takes well under a minute; a build folder this old belongs to a killed process.
_STALE_BUILD_SECS = 3600
_BUILDING_PREFIX = ".building-"

# Synthetic images that set the batch-normalisation statistics.
_CALIBRATION_IMAGES = 16


@dataclass(frozen=True)
class FixturePair:
    """Paths of a built pair and its identity (seed, version, file hashes)."""

    keras_weights: str
    hub_model: str
    identity: dict


def default_cache_dir():
    """INCEPTION_PARITY_CACHE, else $XDG_CACHE_HOME/inception-parity, else ~/.cache/inception-parity."""
    explicit = os.environ.get("INCEPTION_PARITY_CACHE")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "inception-parity")


def ensure_fixture_pair(seed=DEFAULT_FIXTURE_SEED, cache_dir=None):
    """Returns the cached fixture pair for seed, building it first when it is missing.

    The pair is built in a temporary folder and renamed into place, so that a half-built
    pair is never reused and two processes building at once both end with a whole one.
    """
    cache_dir = cache_dir or default_cache_dir()
    folder = os.path.join(cache_dir, f"fixture-v{FIXTURE_VERSION}-seed{seed}")
    pair = _read_pair(folder)
    if pair is not None:
        return pair

    os.makedirs(cache_dir, exist_ok=True)
    remove_stale_builds(cache_dir)
    staging = tempfile.mkdtemp(prefix=_BUILDING_PREFIX, dir=cache_dir)
    try:
        _LOGGER.info("Building the fixture model pair (seed %d) in %s", seed, folder)
        build_fixture_pair(seed, staging)
        try:
            os.rename(staging, folder)
        except OSError:
            # Another process finished first; its pair is identical by construction.
            _LOGGER.info("Fixture pair %s was built concurrently; using that one", folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    pair = _read_pair(folder)
    if pair is None:
        raise RuntimeError(f"Fixture pair in {folder!r} is incomplete after building it")
    return pair


def remove_stale_builds(cache_dir, max_age_secs=_STALE_BUILD_SECS):
    """Deletes build folders left by processes killed while building (older than max_age_secs)."""
    now = time.time()
    for name in os.listdir(cache_dir):
        path = os.path.join(cache_dir, name)
        if name.startswith(_BUILDING_PREFIX) and now - os.path.getmtime(path) > max_age_secs:
            _LOGGER.info("Removing %s, left by a fixture build that did not finish", path)
            shutil.rmtree(path, ignore_errors=True)


def _read_pair(folder):
    manifest_path = os.path.join(folder, MANIFEST_FILE)
    if not os.path.isfile(manifest_path):
        return None
    with open(manifest_path, encoding="utf-8") as handle:
        identity = json.load(handle)
    return FixturePair(
        keras_weights=os.path.join(folder, KERAS_WEIGHTS_FILE),
        hub_model=os.path.join(folder, HUB_MODEL_FOLDER),
        identity=identity,
    )


def build_fixture_pair(seed, folder):
    """Writes the Keras weights file, the hub SavedModel and fixture.json into folder."""
    import keras

    backbone = keras.applications.InceptionV3(
        include_top=False, weights=None, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), pooling=None
    )
    rng = np.random.default_rng(seed)
    _draw_weights(backbone, rng)
    _calibrate_batch_norm(backbone, rng)

    weights_path = os.path.join(folder, KERAS_WEIGHTS_FILE)
    backbone.save_weights(weights_path)
    hub_path = os.path.join(folder, HUB_MODEL_FOLDER)
    export_hub_saved_model(backbone, hub_path)

    identity = {
        "fixture_version": FIXTURE_VERSION,
        "seed": seed,
        "keras_weights_sha256": file_sha256(weights_path),
        "hub_fingerprint": saved_model_fingerprint(hub_path),
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
    }
    with open(os.path.join(folder, MANIFEST_FILE), "w", encoding="utf-8") as handle:
        json.dump(identity, handle, indent=2)


def _draw_weights(model, rng):
    """Sets every variable from rng: He-normal convolution kernels, neutral batch norm."""
    for variable in model.weights:
        name = variable.path.rsplit("/", 1)[-1]
        shape = tuple(variable.shape)
        if name == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        elif name in ("moving_variance", "gamma"):
            value = np.ones(shape)
        else:
            # beta, moving_mean, and any bias.
            value = np.zeros(shape)
        variable.assign(value.astype(np.float32))


def _calibrate_batch_norm(model, rng):
    """Sets each batch norm's moving statistics to those of smooth synthetic images.

    Deep He-initialised networks drift in scale from layer to layer, and with neutral
    batch norm the features vanish (values near 1e-4). One training-mode pass with
    momentum 0 stores every layer's batch mean and variance as its moving statistics, so
    activations are normalised on the synthetic images. Real photos, whose statistics
    differ, then give feature vectors with norms of roughly 50 to 3000, far from both
    zero and overflow, so round-off comparisons mean something.
    """
    import keras

    coarse = rng.uniform(-1.0, 1.0, size=(_CALIBRATION_IMAGES, 8, 8, 3)).astype(np.float32)
    images = tf.image.resize(coarse, (IMAGE_SIZE, IMAGE_SIZE), method="bicubic")
    noise = rng.normal(0.0, 0.1, size=images.shape).astype(np.float32)
    images = tf.clip_by_value(images + noise, -1.0, 1.0)

    batch_norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in batch_norms]
    for layer in batch_norms:
        layer.momentum = 0.0
    model(images, training=True)
    for layer, momentum in zip(batch_norms, momenta, strict=True):
        layer.momentum = momentum


def export_hub_saved_model(backbone, path, pooling="mean"):
    """Exports a Keras InceptionV3 backbone (no pooling) as a TF2 hub-format SavedModel.

    The contract is the real TF Hub feature vector's: call the loaded object on float32
    images [N, 299, 299, 3] in [0, 1] to get [N, 2048], the mean over the 8×8 map. The
    object also carries variables and trainable_variables, as hub models do.
    pooling="max" exports a max-pooled variant, for tests only.
    """
    reduce = {"mean": tf.reduce_mean, "max": tf.reduce_max}[pooling]

    @tf.function(input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32)])
    def call(images):
        # The hub model's own step from [0, 1] to [-1, 1]; for 8-bit inputs it gives the
        # same float32 values as Keras' x / 127.5 - 1.
        scaled = (images - 0.5) * 2.0
        feature_map = backbone(scaled, training=False)
        return reduce(feature_map, axis=[1, 2])

    exported = tf.train.Checkpoint()
    exported.backbone = backbone
    exported.variables = list(backbone.weights)
    exported.trainable_variables = list(backbone.trainable_weights)
    exported.__call__ = call
    tf.saved_model.save(exported, path)
