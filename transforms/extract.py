"""The DoFn that loads both InceptionV3 extractors once per worker and runs every batch
through both, overlapping the forward passes with the decoding of the next images."""

import collections
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from transforms import columns, divergence
from transforms.devices import configure_threads, select_device
from transforms.image_decode import PIXELS
from transforms.models import HubExtractor, KerasExtractor
from transforms.preprocess import hub_input, keras_input

_LOGGER = logging.getLogger(__name__)

ERRORS_TAG = "errors"

# Keys of the per-batch element passed from extraction to divergence.
HUB_BATCH = "hub"
KERAS_BATCH = "keras"
IMAGES_BATCH = "images"
RERUN_BATCH = "rerun"

# Batches submitted to the model thread and not yet collected. One in flight lets the
# next batch decode while the current one runs; more would only hold memory.
_MAX_BATCHES_IN_FLIGHT = 1


def load_extractors(spec, device):
    """Loads the hub and Keras extractors described by an ExtractorSpec on a TF device."""
    with tf.device(device):
        hub_extractor = HubExtractor(spec.hub_model, spec.hub_precision)
        keras_extractor = KerasExtractor(spec.keras_weights, spec.keras_pooling, spec.keras_precision)
    return hub_extractor, keras_extractor


def run_extractors(hub_extractor, keras_extractor, pixels, device):
    """Runs one batch through both extractors, each with its own preprocessing.

    Args:
      pixels: uint8 [N, 299, 299, 3] RGB in [0, 255]; it is not modified.

    Returns:
      (hub_features, keras_features): float32 [N, 2048] each.
    """
    with tf.device(device):
        hub_features = hub_extractor(hub_input(pixels))
        keras_features = keras_extractor(keras_input(pixels))
    return hub_features, keras_features


def pad_batch(pixels, batch_size):
    """Pads a short final batch with black images up to batch_size.

    Every forward pass then has the same shape, so an image's features do not depend on
    how many images happened to share its batch.
    """
    missing = batch_size - len(pixels)
    if missing <= 0:
        return pixels
    padding = np.zeros((missing, *pixels.shape[1:]), dtype=pixels.dtype)
    return np.concatenate([pixels, padding])


class ExtractFeaturesFn(beam.DoFn):
    """Runs batches of decoded images through both extractors.

    Input: a list of decoded-image dicts (see DecodeImageFn). Main output: one dict per
    batch with the images' metadata and both [N, 2048] feature arrays. Tagged output
    ERRORS_TAG: errors rows for the images of a batch the models failed on.

    Forward passes run on one background thread per DoFn instance, so that Beam's thread
    decodes the next batch meanwhile; TensorFlow and Pillow both release the GIL.
    """

    def __init__(
        self, spec, device="auto", batch_size=32, intra_op_threads=0, progress=None, check_determinism=False
    ):
        self._spec = spec
        self._check_determinism = check_determinism
        self._requested_device = device
        self._batch_size = batch_size
        self._intra_op_threads = intra_op_threads
        self._progress = progress
        self._batches = Metrics.counter("inception_parity", "batches_extracted")
        self._loads = Metrics.counter("inception_parity", "extractor_loads")
        self._batch_msecs = Metrics.distribution("inception_parity", "extract_batch_msecs")

    def setup(self):
        started = time.perf_counter()
        configure_threads(self._intra_op_threads)
        self._device = select_device(self._requested_device)
        self._hub, self._keras = load_extractors(self._spec, self._device)
        # A second pair, loaded separately, must give the same numbers: weights that were
        # initialised at random on load would differ between the two pairs.
        self._rerun_pair = load_extractors(self._spec, self._device) if self._check_determinism else None
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inception-models")
        # Metrics can only be reported from inside a bundle, so the load is counted there.
        self._load_counted = False
        _LOGGER.info(
            "Loaded both extractors on %s in %.1f s (process %d)",
            self._device,
            time.perf_counter() - started,
            os.getpid(),
        )

    def start_bundle(self):
        self._pending = collections.deque()

    def process(self, batch):
        if not self._load_counted:
            self._loads.inc()
            self._load_counted = True
        pixels = pad_batch(np.stack([image[PIXELS] for image in batch]), self._batch_size)
        metadata = [{key: value for key, value in image.items() if key != PIXELS} for image in batch]
        future = self._model_thread.submit(self._run_batch, pixels)
        self._pending.append((metadata, future))
        while len(self._pending) > _MAX_BATCHES_IN_FLIGHT:
            yield from self._collect_oldest()

    def finish_bundle(self):
        while self._pending:
            for output in self._collect_oldest():
                if isinstance(output, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(output.tag, GlobalWindows.windowed_value(output.value))
                else:
                    yield GlobalWindows.windowed_value(output)

    def teardown(self):
        model_thread = getattr(self, "_model_thread", None)
        if model_thread is not None:
            model_thread.shutdown(wait=True)

    def _run_batch(self, pixels):
        started = time.perf_counter()
        features = run_extractors(self._hub, self._keras, pixels, self._device)
        rerun_max_abs = None
        if self._rerun_pair is not None:
            rerun = run_extractors(*self._rerun_pair, pixels, self._device)
            rerun_max_abs = tuple(
                np.abs(first - second).max(axis=1) for first, second in zip(features, rerun, strict=True)
            )
        return features, rerun_max_abs, time.perf_counter() - started

    def _collect_oldest(self):
        metadata, future = self._pending.popleft()
        try:
            (hub_features, keras_features), rerun_max_abs, elapsed_secs = future.result()
        except tf.errors.OpError as err:
            _LOGGER.error("Extraction failed for a batch of %d images: %s", len(metadata), err.message)
            for image in metadata:
                yield beam.pvalue.TaggedOutput(
                    ERRORS_TAG,
                    {
                        columns.PATH: image[columns.PATH],
                        columns.STAGE: "extract",
                        columns.ERROR: f"model run failed ({type(err).__name__}: {err.message})",
                    },
                )
            return
        self._batch_msecs.update(int(elapsed_secs * 1000))
        self._batches.inc()
        if self._progress is not None:
            self._progress.add(len(metadata))

        count = len(metadata)
        yield {
            IMAGES_BATCH: metadata,
            HUB_BATCH: hub_features[:count],
            KERAS_BATCH: keras_features[:count],
            RERUN_BATCH: rerun_max_abs,
            columns.DEVICE: self._device,
        }


def to_feature_rows(extracted):
    """Computes the divergence columns of one extracted batch and yields one row per image."""
    hub_features = extracted[HUB_BATCH]
    keras_features = extracted[KERAS_BATCH]
    measures = divergence.divergence_columns(hub_features, keras_features)
    for i, image in enumerate(extracted[IMAGES_BATCH]):
        row = dict(image)
        row[columns.HUB_FEATURES] = hub_features[i]
        row[columns.KERAS_FEATURES] = keras_features[i]
        for name in columns.DIVERGENCE_COLUMNS:
            row[name] = float(measures[name][i])
        row[columns.DEVICE] = extracted[columns.DEVICE]
        rerun = extracted[RERUN_BATCH]
        row[columns.HUB_RERUN_MAX_ABS] = None if rerun is None else float(rerun[0][i])
        row[columns.KERAS_RERUN_MAX_ABS] = None if rerun is None else float(rerun[1][i])
        yield row
