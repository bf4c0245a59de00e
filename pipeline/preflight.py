"""Checks made in the launching process before any image is read: the input exists and
both models load and return InceptionV3 feature vectors."""

import gc
import logging
import time

import numpy as np

from transforms import fixture
from transforms.extract import load_extractors, run_extractors
from transforms.image_decode import IMAGE_SIZE
from transforms.models import DEFAULT_HUB_MODEL, IMAGENET, ExtractorSpec, check_output

_LOGGER = logging.getLogger(__name__)


def resolve_spec(job, hub_precision="float32", keras_precision="float32"):
    """Turns the model flags into an ExtractorSpec and its identity, and builds the
    fixture pair first with --models fixture."""
    if job.models == "fixture":
        pair = fixture.ensure_fixture_pair(job.fixture_seed)
        hub_model, keras_weights, identity = pair.hub_model, pair.keras_weights, {"fixture": pair.identity}
    else:
        hub_model, keras_weights, identity = (
            job.hub_model or DEFAULT_HUB_MODEL,
            job.keras_weights or IMAGENET,
            {},
        )
    spec = ExtractorSpec(hub_model, keras_weights, job.keras_pooling, hub_precision, keras_precision)
    return spec, identity


def check_models(spec):
    """Loads both extractors on the CPU and runs one black image through them.

    Returns:
      dict with the hub and Keras model identities.

    Raises:
      ModelLoadError: a model cannot be loaded or does not return [N, 2048] features.
    """
    started = time.perf_counter()
    hub_extractor, keras_extractor = load_extractors(spec, "/CPU:0")
    probe = np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    hub_features, keras_features = run_extractors(hub_extractor, keras_extractor, probe, "/CPU:0")
    check_output(f"TF Hub model {spec.hub_model!r}", hub_features, 1)
    check_output(f"Keras InceptionV3 with weights {spec.keras_weights!r}", keras_features, 1)
    identities = {"hub": hub_extractor.identity(), "keras": keras_extractor.identity()}
    _LOGGER.info("Both models load and run (checked in %.1f s)", time.perf_counter() - started)

    # The workers load their own copies; this process need not keep these.
    del hub_extractor, keras_extractor
    gc.collect()
    return identities
