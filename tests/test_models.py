"""Loading both hub formats and Keras weights from local paths, and the errors when a model
cannot be loaded."""

import os
import subprocess
import sys
import urllib.error

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, SAMPLES_DIR
from tests.model_files import tf1_expected_features, write_tf1_hub_module
from transforms import models
from transforms.models import HubExtractor, KerasExtractor, ModelLoadError


def random_images(count, seed=0):
    """float32 [count, 299, 299, 3] in [0, 1]."""
    return np.random.default_rng(seed).random((count, 299, 299, 3), dtype=np.float32)


def test_tf2_hub_saved_model_loads_and_matches_keras(fixture_extractors):
    hub_extractor, keras_extractor = fixture_extractors
    images = random_images(2)
    hub_features = hub_extractor(images)
    keras_features = keras_extractor(images * 2.0 - 1.0)
    assert hub_features.shape == (2, 2048)
    assert hub_features.dtype == np.float32
    assert hub_extractor.identity()["format"] == "tf2-saved-model"
    assert np.abs(hub_features - keras_features).max() <= 1e-5


def test_tf1_hub_format_loads_from_signatures(tmp_path):
    module_path = tmp_path / "tf1_module"
    module_path.mkdir()
    write_tf1_hub_module(module_path)
    extractor = HubExtractor(str(module_path))
    images = random_images(3, seed=1)
    assert extractor.identity()["format"] == "tf1-hub"
    np.testing.assert_allclose(extractor(images), tf1_expected_features(images), rtol=1e-5, atol=1e-6)


def test_keras_weights_file_loads_from_path(fixture_pair, fixture_extractors):
    _, first = fixture_extractors
    second = KerasExtractor(fixture_pair.keras_weights, "avg")
    images = random_images(1, seed=2) * 2.0 - 1.0
    # Two extractors built from the same file give the same numbers: no random weights.
    assert np.array_equal(first(images), second(images))
    assert second.identity()["sha256"] == fixture_pair.identity["keras_weights_sha256"]


def test_keras_max_pooling_differs_from_avg(fixture_pair, fixture_extractors):
    _, avg_extractor = fixture_extractors
    max_extractor = KerasExtractor(fixture_pair.keras_weights, "max")
    images = random_images(1, seed=3) * 2.0 - 1.0
    avg, peak = avg_extractor(images), max_extractor(images)
    # A maximum over the 8x8 map is never below its mean.
    assert np.all(peak >= avg - 1e-6)
    assert np.abs(peak - avg).max() > 0.1


def test_missing_hub_path_names_path_and_fix(tmp_path):
    missing = str(tmp_path / "no_such_model")
    with pytest.raises(ModelLoadError) as raised:
        HubExtractor(missing)
    message = str(raised.value)
    assert missing in message
    assert "TF Hub model" in message
    assert "--models fixture" in message


def test_folder_without_saved_model_is_rejected(tmp_path):
    (tmp_path / "saved_model.pb").write_bytes(b"not a protobuf")
    with pytest.raises(ModelLoadError, match="not a readable SavedModel"):
        HubExtractor(str(tmp_path))


def test_offline_hub_handle_explains_cache(monkeypatch):
    import tensorflow_hub as hub

    def fail(handle):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(hub, "resolve", fail)
    with pytest.raises(ModelLoadError) as raised:
        HubExtractor(models.DEFAULT_HUB_MODEL)
    message = str(raised.value)
    assert models.DEFAULT_HUB_MODEL in message
    assert "TFHUB_CACHE_DIR" in message
    assert "downloading failed" in message


def test_offline_keras_imagenet_explains_keras_home(monkeypatch):
    import keras

    def fail(*args, **kwargs):
        raise Exception("URL fetch failure: Name or service not known")

    monkeypatch.setattr(keras.utils, "get_file", fail)
    with pytest.raises(ModelLoadError) as raised:
        KerasExtractor("imagenet")
    message = str(raised.value)
    assert models.KERAS_IMAGENET_NOTOP_FILE in message
    assert "KERAS_HOME" in message


def test_corrupt_keras_weights_file_names_file(tmp_path):
    corrupt = tmp_path / "broken.weights.h5"
    corrupt.write_bytes(b"this is not HDF5")
    with pytest.raises(ModelLoadError) as raised:
        KerasExtractor(str(corrupt))
    assert str(corrupt) in str(raised.value)


def test_keras_weights_with_wrong_suffix_rejected(tmp_path):
    pickled = tmp_path / "weights.pkl"
    pickled.write_bytes(b"\x80\x04")
    with pytest.raises(ModelLoadError, match="must end with"):
        KerasExtractor(str(pickled))


def test_cli_stops_before_reading_when_model_missing(tmp_path):
    output = tmp_path / "out"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "run",
            "--input",
            str(SAMPLES_DIR),
            "--output",
            str(output),
            "--hub_model",
            str(tmp_path / "missing_model"),
            "--keras_weights",
            str(tmp_path / "missing.weights.h5"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        timeout=300,
    )
    assert completed.returncode == 3
    assert "Cannot load the TF Hub model" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert not output.exists()


def test_bfloat16_is_close_but_not_float32(fixture_pair, fixture_extractors):
    _, float32_extractor = fixture_extractors
    bfloat16_extractor = KerasExtractor(fixture_pair.keras_weights, "avg", precision="bfloat16")
    images = random_images(2, seed=4) * 2.0 - 1.0
    before = float32_extractor(images)
    reduced = bfloat16_extractor(images)
    after = float32_extractor(images)
    cosine = (reduced * before).sum(axis=1) / np.linalg.norm(reduced, axis=1) / np.linalg.norm(before, axis=1)
    assert reduced.dtype == np.float32
    assert cosine.min() >= 0.999
    assert not np.array_equal(reduced, before)
    # The process-wide rewrite setting must not leak into the float32 extractor.
    assert np.array_equal(before, after)


def test_keras_variables_left_unloaded_are_rejected(tmp_path, fixture_pair, monkeypatch):
    import keras

    # Keras may skip a part of a weights file with only a warning, leaving those
    # variables as initialised. Simulate a load that fills nothing but the first layer.
    def load_first_variable_only(model, path):
        first = model.weights[0]
        first.assign(np.zeros(first.shape, dtype=first.dtype))

    monkeypatch.setattr(keras.Model, "load_weights", load_first_variable_only)
    with pytest.raises(ModelLoadError) as raised:
        KerasExtractor(fixture_pair.keras_weights)
    message = str(raised.value)
    assert "375 of 376 variables were not in the file" in message
    assert fixture_pair.keras_weights in message


def test_keras_weights_missing_layer_rejected(tmp_path, fixture_pair):
    import h5py

    partial = tmp_path / "partial.weights.h5"
    partial.write_bytes(open(fixture_pair.keras_weights, "rb").read())
    with h5py.File(partial, "r+") as weights_file:
        del weights_file["layers/conv2d_5"]
    with pytest.raises(ModelLoadError) as raised:
        KerasExtractor(str(partial))
    assert str(partial) in str(raised.value)


def test_mismatched_keras_weights_name_file(tmp_path):
    import keras

    small = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    path = tmp_path / "small.weights.h5"
    small.save_weights(path)
    with pytest.raises(ModelLoadError) as raised:
        KerasExtractor(str(path))
    assert str(path) in str(raised.value)


def test_model_file_code_is_never_executed(tmp_path):
    import keras

    marker = tmp_path / "code_ran"
    marker_path = str(marker)
    layer = keras.layers.Lambda(lambda x: (open(marker_path, "w").close(), x)[1])
    model = keras.Sequential([keras.Input((4,)), layer])
    path = tmp_path / "with_code.keras"
    model.save(path)
    marker.unlink(missing_ok=True)
    with pytest.raises(ModelLoadError):
        KerasExtractor(str(path))
    assert not marker.exists()


def test_hub_model_with_wrong_output_shape_rejected(tmp_path, fixture_pair):
    import tensorflow as tf

    from pipeline.preflight import check_models

    module = tf.Module()
    module.__call__ = tf.function(
        lambda images: tf.reduce_mean(images, axis=[1, 2]),
        input_signature=[models.IMAGE_SIGNATURE],
    )
    tf.saved_model.save(module, str(tmp_path / "three_outputs"))
    spec = models.ExtractorSpec(str(tmp_path / "three_outputs"), fixture_pair.keras_weights)
    with pytest.raises(ModelLoadError, match=r"shape \(1, 3\), expected \(1, 2048\)"):
        check_models(spec)
