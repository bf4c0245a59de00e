"""Loading of the two InceptionV3 feature extractors: the TF Hub model and Keras InceptionV3.

Both run their forward pass in a tf.function with a fixed input signature
[None, 299, 299, 3] float32 and return float32 features [N, 2048]. Neither ever uses
randomly initialised weights: Keras weights always come from a file, and a hub model is
a SavedModel whose variables are restored from its checkpoint.
"""

import hashlib
import logging
import os
import threading
import warnings
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from transforms import columns
from transforms.image_decode import IMAGE_SIZE

_LOGGER = logging.getLogger(__name__)

DEFAULT_HUB_MODEL = "https://tfhub.dev/google/imagenet/inception_v3/feature_vector/5"
IMAGENET = "imagenet"
KERAS_POOLINGS = ("avg", "max")
# The file keras.applications.InceptionV3(include_top=False, weights="imagenet") fetches.
KERAS_IMAGENET_NOTOP_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
KERAS_WEIGHT_SUFFIXES = (".weights.h5", ".h5", ".hdf5", ".keras")

# Signature names the legacy TF1 Hub format uses for image feature vectors, in the
# order they are tried.
TF1_SIGNATURES = ("image_feature_vector", "default", "serving_default")

IMAGE_SIGNATURE = tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32)

PRECISIONS = ("float32", "bfloat16")
# Grappler's oneDNN rewrite runs a graph's convolutions and matrix products in bfloat16
# on CPUs; graph inputs and outputs stay float32. It works on any loaded SavedModel, so
# both extractors get the same treatment. The setting is process-wide and TF caches one
# optimised graph per setting, so each call sets it under a lock.
_BFLOAT16_REWRITE = "auto_mixed_precision_onednn_bfloat16"
_rewrite_lock = threading.Lock()
_rewrite_enabled = [False]

_FIX_HINT = (
    "To run offline: pre-fill a TF Hub cache and point TFHUB_CACHE_DIR at it, or pass a "
    "local SavedModel folder with --hub_model; put Keras' weights file into "
    "$KERAS_HOME/models (default ~/.keras/models) or pass --keras_weights PATH; or run "
    "on the self-built fixture pair with --models fixture."
)


_KERAS_HINT = (
    "Pass a weights file saved from keras.applications.InceptionV3(include_top=False) with "
    "--keras_weights, or run on the self-built fixture pair with --models fixture."
)


class ModelLoadError(RuntimeError):
    """A feature extractor failed to load. The message names the model, the reason and the fix."""


@dataclass(frozen=True)
class ExtractorSpec:
    """Description of the two models to load, picklable so that it travels to Beam workers.

    hub_model: TF Hub handle (URL) or path to a SavedModel folder.
    keras_weights: "imagenet" or path to a Keras weights file.
    keras_pooling: "avg" or "max", the global pooling on Keras' 8×8×2048 map.
    """

    hub_model: str
    keras_weights: str
    keras_pooling: str = "avg"
    hub_precision: str = "float32"
    keras_precision: str = "float32"


def _check_precision(precision):
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, received {precision!r}")
    return precision


def run_forward(forward, images, precision):
    """Calls a traced forward function in the given precision; returns float32 numpy."""
    with _rewrite_lock:
        enable = precision == "bfloat16"
        if _rewrite_enabled[0] != enable:
            tf.config.optimizer.set_experimental_options({_BFLOAT16_REWRITE: enable})
            _rewrite_enabled[0] = enable
        return forward(images).numpy().astype(np.float32, copy=False)


def _load_error(model, location, why, hint=_FIX_HINT):
    return ModelLoadError(f"Cannot load the {model} from {location!r}: {why}\n{hint}")


class HubExtractor:
    """TF Hub InceptionV3 feature vector: float32 [N, 299, 299, 3] in [0, 1] → [N, 2048]."""

    def __init__(self, handle, precision="float32"):
        self.handle = handle
        self.precision = _check_precision(precision)
        self.module_path = _resolve_hub_handle(handle)
        self.is_tf1_format = os.path.exists(os.path.join(self.module_path, "tfhub_module.pb"))
        try:
            import tensorflow_hub as hub

            self.module = hub.load(self.module_path)
        except (OSError, ValueError, tf.errors.OpError) as err:
            raise _load_error(
                "TF Hub model", handle, f"{self.module_path!r} is not a readable SavedModel ({err})"
            ) from err

        call = self._find_call()
        self._forward = tf.function(call, input_signature=[IMAGE_SIGNATURE])

    def _find_call(self):
        # A TF2 SavedModel is called directly; the legacy TF1 Hub format only has signatures.
        if not self.is_tf1_format and callable(self.module):
            module = self.module
            return lambda images: module(images)

        signatures = getattr(self.module, "signatures", {})
        for name in TF1_SIGNATURES:
            if name in signatures:
                signature = signatures[name]
                input_name = next(iter(signature.structured_input_signature[1]))
                output_name = _pick_feature_output(signature.structured_outputs)
                return lambda images: signature(**{input_name: images})[output_name]
        raise _load_error(
            "TF Hub model",
            self.handle,
            f"it is neither callable nor has one of the signatures {TF1_SIGNATURES} "
            f"(found {sorted(signatures)})",
            hint="Pass an image feature-vector model with --hub_model.",
        )

    def __call__(self, images):
        return run_forward(self._forward, images, self.precision)

    @property
    def variables(self):
        return list(getattr(self.module, "variables", []))

    def identity(self):
        return {
            "handle": self.handle,
            "path": self.module_path,
            "format": "tf1-hub" if self.is_tf1_format else "tf2-saved-model",
            "fingerprint": saved_model_fingerprint(self.module_path),
            "precision": self.precision,
        }


class KerasExtractor:
    """Keras InceptionV3(include_top=False): float32 [N, 299, 299, 3] in [-1, 1] → [N, 2048]."""

    def __init__(self, weights, pooling="avg", precision="float32"):
        import keras

        self.precision = _check_precision(precision)
        if pooling not in KERAS_POOLINGS:
            raise ValueError(f"keras_pooling must be one of {KERAS_POOLINGS}, received {pooling!r}")
        self.weights_path = _resolve_keras_weights(weights)
        self.weights = weights
        self.pooling = pooling

        # weights=None builds the graph only; _load_weights fills every variable from the file.
        self.model = keras.applications.InceptionV3(
            include_top=False,
            weights=None,
            input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
            pooling=pooling,
        )
        self._load_weights()
        model = self.model
        self._forward = tf.function(
            lambda images: model(images, training=False), input_signature=[IMAGE_SIGNATURE]
        )

    def _load_weights(self):
        """Fills every variable from the weights file, or raises ModelLoadError.

        Keras skips a layer that is missing from a weights file with only a warning,
        keeping its random initial values. Every variable is set to NaN first, so a
        variable the file did not fill is found here instead of skewing features.
        """
        for variable in self.model.weights:
            variable.assign(np.full(variable.shape, np.nan, dtype=variable.dtype))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                self.model.load_weights(self.weights_path)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise _load_error(
                "Keras InceptionV3 weights",
                self.weights_path,
                f"the file does not hold InceptionV3(include_top=False) weights ({err})",
                hint=_KERAS_HINT,
            ) from err

        unfilled = [variable.path for variable in self.model.weights if np.isnan(variable.numpy()).any()]
        if unfilled:
            shown = ", ".join(unfilled[:5]) + (f" and {len(unfilled) - 5} more" if len(unfilled) > 5 else "")
            raise _load_error(
                "Keras InceptionV3 weights",
                self.weights_path,
                f"{len(unfilled)} of {len(self.model.weights)} variables were not in the file ({shown})",
                hint=_KERAS_HINT,
            )

    def __call__(self, images):
        return run_forward(self._forward, images, self.precision)

    @property
    def variables(self):
        return list(self.model.weights)

    def identity(self):
        return {
            "weights": self.weights,
            "path": self.weights_path,
            "sha256": file_sha256(self.weights_path),
            "pooling": self.pooling,
            "precision": self.precision,
        }


def _resolve_hub_handle(handle):
    """Returns the local folder of a hub handle, downloading it into the cache if needed."""
    is_url = "://" in handle and not handle.startswith("file://")
    if not is_url:
        path = handle[len("file://") :] if handle.startswith("file://") else handle
        if not os.path.isdir(path):
            raise _load_error("TF Hub model", handle, "no SavedModel folder at that path")
        return path

    import tensorflow_hub as hub

    try:
        return hub.resolve(handle)
    except Exception as err:  # noqa: BLE001 - hub raises URLError, ValueError or OpError
        cache_dir = os.environ.get("TFHUB_CACHE_DIR") or os.path.join(
            os.environ.get("TMPDIR", "/tmp"), "tfhub_modules"
        )
        entry = os.path.join(cache_dir, hashlib.sha1(handle.encode("utf8")).hexdigest())
        partial = ""
        if os.path.exists(entry):
            partial = (
                f" A cache folder {entry!r} exists for this handle; if it is empty or "
                "partial, delete it before trying again."
            )
        raise _load_error(
            "TF Hub model",
            handle,
            f"it is not in the cache {cache_dir!r} and downloading failed "
            f"({type(err).__name__}: {err}).{partial}",
        ) from err


def _resolve_keras_weights(weights):
    """Returns the local path of a Keras weights file, fetching ImageNet's into the cache."""
    if weights != IMAGENET:
        if not os.path.isfile(weights):
            raise _load_error("Keras InceptionV3 weights", weights, "no file at that path")
        if not weights.endswith(KERAS_WEIGHT_SUFFIXES):
            raise _load_error(
                "Keras InceptionV3 weights",
                weights,
                f"the file name must end with one of {KERAS_WEIGHT_SUFFIXES}",
                hint="Pass a Keras weights file (HDF5 or .keras) with --keras_weights.",
            )
        return weights

    import keras

    try:
        # The same URL and checksum keras.applications.InceptionV3 uses for weights="imagenet".
        return keras.utils.get_file(
            KERAS_IMAGENET_NOTOP_FILE,
            "https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/"
            + KERAS_IMAGENET_NOTOP_FILE,
            cache_subdir="models",
            file_hash="bcbd6486424b2319ff4ef7d526e38f63",
        )
    except Exception as err:  # noqa: BLE001 - get_file raises a bare Exception when offline
        keras_home = os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras"))
        raise _load_error(
            "Keras InceptionV3 weights",
            IMAGENET,
            f"{KERAS_IMAGENET_NOTOP_FILE} is not in {os.path.join(keras_home, 'models')!r} "
            f"and downloading failed ({err})",
        ) from err


def _pick_feature_output(outputs):
    if not isinstance(outputs, dict):
        return None
    if "default" in outputs:
        return "default"
    for name, spec in outputs.items():
        if spec.shape.rank == 2 and spec.shape[-1] == columns.FEATURE_DIM:
            return name
    return next(iter(outputs))


def file_sha256(path, chunk_bytes=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def saved_model_fingerprint(path):
    """Identifies a SavedModel by TF's fingerprint, or by saved_model.pb's hash without one."""
    try:
        fingerprint = tf.saved_model.experimental.read_fingerprint(path)
        return f"tf-fingerprint:{fingerprint.saved_model_checksum}"
    except (ValueError, OSError, tf.errors.OpError):
        return f"sha256:{file_sha256(os.path.join(path, 'saved_model.pb'))}"


def check_output(name, features, batch_size):
    """Raises ModelLoadError unless features has the shape [batch_size, 2048]."""
    features = np.asarray(features)
    expected = (batch_size, columns.FEATURE_DIM)
    if features.shape != expected:
        raise ModelLoadError(
            f"The {name} returned features of shape {features.shape}, expected {expected}: "
            "it is not an InceptionV3 feature-vector model."
        )
