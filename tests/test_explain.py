"""`inception-parity explain`: the ranking of Keras configurations on the fixture pair, the sample
selection, and the detection of the hub graph's final pooling op."""

import json
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow as tf

from pipeline import explain
from tests.conftest import PHOTOS_DIR, image_files
from tests.model_files import write_tf1_hub_module
from transforms import divergence
from transforms.image_decode import IMAGE_SIZE, decode_image
from transforms.models import HubExtractor, KerasExtractor
from transforms.preprocess import hub_input, keras_input

SAMPLE = 4


@pytest.fixture(scope="module")
def keras_extractors(fixture_pair, fixture_extractors):
    """Keras extractors of the fixture weights by pooling; avg is the session's."""
    return {"avg": fixture_extractors[1], "max": KerasExtractor(fixture_pair.keras_weights, "max")}


@pytest.fixture(scope="module")
def explained(fixture_extractors, keras_extractors):
    return explain.explain(str(PHOTOS_DIR), fixture_extractors[0], keras_extractors, sample=SAMPLE)


def configuration_of(row):
    return row["pooling"], row["input_range"], row["resize_filter"]


def test_run_default_configuration_ranks_first(explained):
    best = explained["ranking"][0]
    assert configuration_of(best) == ("avg", "[-1, 1]", "bilinear")
    assert best["run_default"] is True
    assert best["max_abs_diff_worst"] <= 1e-5
    assert best["cosine_similarity_worst"] >= 0.99999
    assert best["round_off"] is True


def test_every_configuration_ranked_once(explained):
    ranking = explained["ranking"]
    assert [row["rank"] for row in ranking] == list(range(1, 9))
    expected = {
        (pooling, input_range, resize_filter)
        for pooling in ("avg", "max")
        for input_range in ("[-1, 1]", "[0, 1]")
        for resize_filter in ("bilinear", "bicubic")
    }
    assert {configuration_of(row) for row in ranking} == expected
    medians = [row["relative_l2_median"] for row in ranking]
    assert medians == sorted(medians)


def test_max_pooling_ranks_far_behind(explained):
    ranking = explained["ranking"]
    assert [row["pooling"] for row in ranking[4:]] == ["max"] * 4
    for row in ranking[1:]:
        assert row["round_off"] is False, configuration_of(row)
    for row in ranking[4:]:
        assert row["relative_l2_median"] > 0.1, configuration_of(row)
        assert row["cosine_similarity_median"] < 0.99, configuration_of(row)


def test_max_pooling_row_matches_direct_computation(explained, fixture_extractors, keras_extractors):
    hub_extractor, _ = fixture_extractors
    paths = explained["sample"]["paths"]
    pixels = np.stack([decode_image(pathlib.Path(path).read_bytes()).pixels for path in paths])
    hub = hub_extractor(hub_input(pixels))
    keras = keras_extractors["max"](keras_input(pixels))
    row = next(r for r in explained["ranking"] if configuration_of(r) == ("max", "[-1, 1]", "bilinear"))
    assert row["cosine_similarity_median"] == pytest.approx(
        np.median(divergence.cosine_similarity(hub, keras))
    )
    assert row["max_abs_diff_worst"] == pytest.approx(divergence.max_abs_diff(hub, keras).max())
    assert row["relative_l2_median"] == pytest.approx(np.median(divergence.relative_l2(hub, keras)))


def test_sample_spreads_over_sorted_matches(explained):
    everything = sorted(str(path) for path in image_files(PHOTOS_DIR))
    picked = explain.sample_image_paths(str(PHOTOS_DIR), SAMPLE)
    assert len(picked) == SAMPLE
    assert len(set(picked)) == SAMPLE
    assert picked[0] == everything[0]
    assert picked[-1] == everything[-1]
    assert picked == sorted(picked)
    assert explained["sample"]["paths"] == picked
    assert explain.sample_image_paths(str(PHOTOS_DIR), 100) == everything


def test_sample_skips_hidden_and_non_images(tmp_path):
    photo = image_files(PHOTOS_DIR)[0]
    shutil.copy(photo, tmp_path / "a.jpg")
    shutil.copy(photo, tmp_path / ".hidden.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    assert explain.sample_image_paths(str(tmp_path), 10) == [str(tmp_path / "a.jpg")]


def test_undecodable_file_left_out(tmp_path):
    shutil.copy(image_files(PHOTOS_DIR)[0], tmp_path / "good.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    paths = explain.sample_image_paths(str(tmp_path), 10)
    decoded, pixels, failures = explain.decode_sample(paths, ("bilinear", "bicubic"))
    assert decoded == [str(tmp_path / "good.png")]
    assert [failure["path"] for failure in failures] == [str(tmp_path / "broken.jpg")]
    for resize_filter in ("bilinear", "bicubic"):
        assert pixels[resize_filter].shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3)
        assert pixels[resize_filter].dtype == np.uint8
    assert not np.array_equal(pixels["bilinear"], pixels["bicubic"])


def test_fixture_hub_graph_ends_with_spatial_mean(explained):
    pooling = explained["hub_pooling"]
    assert pooling["op"] == "Mean"
    assert pooling["axes"] == [1, 2]
    assert pooling["keep_dims"] is False
    assert pooling["input_shape"] == [None, 8, 8, 2048]
    assert pooling["ops_after"] == []
    assert pooling["description"].startswith(
        "hub graph ends with Mean over axes [1, 2] (average pooling over the spatial grid)"
    )


def test_max_pooled_export_detected_as_max(tmp_path, fixture_pair):
    import keras

    from transforms.fixture import export_hub_saved_model

    backbone = keras.applications.InceptionV3(
        include_top=False, weights=None, pooling=None, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3)
    )
    backbone.load_weights(fixture_pair.keras_weights)
    export_hub_saved_model(backbone, str(tmp_path / "max_hub"), pooling="max")

    pooling = explain.find_final_pooling(HubExtractor(str(tmp_path / "max_hub")))
    assert pooling["op"] == "Max"
    assert pooling["kind"] == "max"
    assert pooling["axes"] == [1, 2]
    assert "max pooling over the spatial grid" in pooling["description"]


class NestedPoolingModule(tf.Module):
    """Features = squeeze(max over H, W of relu(x) @ w), with the max inside a second tf.function."""

    def __init__(self):
        super().__init__()
        self.weights = tf.Variable(tf.ones([3, 2048]))

    @tf.function(input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32)])
    def __call__(self, images):
        return tf.squeeze(self.pool(images * 2.0), axis=[1, 2])

    @tf.function
    def pool(self, images):
        return tf.reduce_max(tf.nn.relu(images) @ self.weights, axis=[-3, -2], keepdims=True)


def test_pooling_inside_called_function_found(tmp_path):
    tf.saved_model.save(NestedPoolingModule(), str(tmp_path / "nested"))
    pooling = explain.find_final_pooling(HubExtractor(str(tmp_path / "nested")))
    assert pooling["op"] == "Max"
    assert pooling["axes"] == [-3, -2]
    assert pooling["keep_dims"] is True
    assert pooling["function"] is not None
    assert pooling["ops_after"] == ["Squeeze"]
    assert "max pooling over the spatial grid" in pooling["description"]


def test_tf1_signature_graph_pooling_found(tmp_path):
    write_tf1_hub_module(tmp_path)
    pooling = explain.find_final_pooling(HubExtractor(str(tmp_path)))
    assert pooling["op"] == "Mean"
    assert pooling["axes"] == [1, 2]
    assert pooling["input_shape"] == [None, IMAGE_SIZE, IMAGE_SIZE, 3]
    assert pooling["ops_after"] == ["MatMul"]


def test_cli_prints_table_and_writes_json(
    tmp_path, capsys, monkeypatch, fixture_extractors, keras_extractors
):
    # Loading the three models again would take seconds; the CLI gets the loaded ones.
    monkeypatch.setattr(explain, "load_models", lambda spec: (fixture_extractors[0], keras_extractors))
    json_path = tmp_path / "explain.json"
    argv = ["--input", str(PHOTOS_DIR), "--models", "fixture", "--sample", "2", "--json", str(json_path)]

    assert explain.main(argv) == explain.EXIT_OK
    printed = capsys.readouterr().out
    table_rows = [line for line in printed.splitlines() if line[:4].strip().rstrip("*").isdigit()]
    assert len(table_rows) == 8
    assert table_rows[0].split()[:5] == ["1*", "avg", "[-1,", "1]", "bilinear"]
    assert "Best match: pooling=avg, input [-1, 1], resize filter bilinear" in printed
    assert "hub graph ends with Mean over axes [1, 2]" in printed
    written = json.loads(json_path.read_text())
    assert len(written["sample"]["paths"]) == 2
    assert [row["rank"] for row in written["ranking"]] == list(range(1, 9))
    assert written["hub_pooling"]["op"] == "Mean"


def test_cli_rejects_fixture_with_model_paths(tmp_path):
    with pytest.raises(SystemExit) as exited:
        explain.main(["--input", str(PHOTOS_DIR), "--models", "fixture", "--hub_model", str(tmp_path)])
    assert exited.value.code == 2


def test_cli_missing_input_exits_2(tmp_path, capsys):
    missing = tmp_path / "missing"
    assert explain.main(["--input", str(missing), "--models", "fixture"]) == explain.EXIT_USAGE
    assert str(missing) in capsys.readouterr().err
