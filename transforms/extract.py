"""The DoFn that loads both InceptionV3 extractors once per worker and runs every batch
through both."""

import logging
import os
import time

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.metrics import Metrics

from transforms import columns, divergence
from transforms.devices import select_device
from transforms.image_decode import PIXELS
from transforms.models import HubExtractor, KerasExtractor
from transforms.preprocess import hub_input, keras_input

_LOGGER = logging.getLogger(__name__)

ERRORS_TAG = "errors"

# Keys of the per-batch element passed from extraction to divergence.
HUB_BATCH = "hub"
KERAS_BATCH = "keras"
IMAGES_BATCH = "images"


def load_extractors(spec, device):
    """Loads the hub and Keras extractors described by an ExtractorSpec on a TF device."""
    with tf.device(device):
        return HubExtractor(spec.hub_model), KerasExtractor(spec.keras_weights, spec.keras_pooling)


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


class ExtractFeaturesFn(beam.DoFn):
    """Runs batches of decoded images through both extractors.

    Input: a list of decoded-image dicts (see DecodeImageFn). Main output: one dict per
    batch with the images' metadata and both [N, 2048] feature arrays. Tagged output
    ERRORS_TAG: errors rows for the images of a batch the models failed on.
    """

    def __init__(self, spec, device="auto"):
        self._spec = spec
        self._requested_device = device
        self._batches = Metrics.counter("inception_parity", "batches_extracted")
        self._loads = Metrics.counter("inception_parity", "extractor_loads")
        self._batch_msecs = Metrics.distribution("inception_parity", "extract_batch_msecs")

    def setup(self):
        started = time.perf_counter()
        self._device = select_device(self._requested_device)
        self._hub, self._keras = load_extractors(self._spec, self._device)
        # Metrics can only be reported from inside a bundle, so the load is counted there.
        self._load_counted = False
        _LOGGER.info(
            "Loaded both extractors on %s in %.1f s (process %d)",
            self._device,
            time.perf_counter() - started,
            os.getpid(),
        )

    def process(self, batch):
        if not self._load_counted:
            self._loads.inc()
            self._load_counted = True
        pixels = np.stack([image[PIXELS] for image in batch])
        started = time.perf_counter()
        try:
            hub_features, keras_features = run_extractors(self._hub, self._keras, pixels, self._device)
        except tf.errors.OpError as err:
            _LOGGER.error("Extraction failed for a batch of %d images: %s", len(batch), err)
            for image in batch:
                yield beam.pvalue.TaggedOutput(
                    ERRORS_TAG,
                    {
                        columns.PATH: image[columns.PATH],
                        columns.STAGE: "extract",
                        columns.ERROR: f"model run failed ({type(err).__name__}: {err.message})",
                    },
                )
            return
        self._batch_msecs.update(int((time.perf_counter() - started) * 1000))
        self._batches.inc()

        metadata = [{key: value for key, value in image.items() if key != PIXELS} for image in batch]
        yield {
            IMAGES_BATCH: metadata,
            HUB_BATCH: hub_features,
            KERAS_BATCH: keras_features,
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
        yield row
