"""`inception-parity compare-weights`: pairing hub variables with Keras weights, on the fixture pair,
on a Keras weights file with one layer changed, and on small hand-made tensor lists."""

import json

import numpy as np
import pytest

from pipeline import compare_weights
from pipeline.compare_weights import NamedTensor
from transforms.image_decode import IMAGE_SIZE

PERTURBED_CONV = 10
PERTURBATION = 0.25


def tensors(*values, layer=None):
    return [NamedTensor(index, f"t{index}", layer, np.asarray(value)) for index, value in enumerate(values)]


def test_fixture_pair_every_tensor_identical(fixture_extractors):
    hub_extractor, keras_extractor = fixture_extractors
    keras_weights = keras_extractor.model.weights
    result = compare_weights.compare_weights(
        compare_weights.keras_tensors(keras_extractor.model),
        compare_weights.hub_tensors(hub_extractor.variables),
    )
    assert result["identical"] == len(keras_weights)
    assert result["different"] == 0
    assert result["unmatched_keras"] == []
    assert result["unmatched_hub"] == []
    # The fixture exports the backbone's weights in Keras' order.
    assert [pair.hub_index for pair in result["pairs"]] == list(range(len(keras_weights)))
    summary = compare_weights.format_comparison(result).splitlines()[0]
    assert summary == f"{len(keras_weights)} identical, 0 differ, 0 unmatched (0 Keras, 0 hub)"


@pytest.fixture(scope="module")
def perturbed_weights(tmp_path_factory, fixture_pair):
    """Writes the fixture weights with one element of the PERTURBED_CONV-th Conv2D kernel changed.

    Returns:
      (weights file path, layer index, weight index, original kernel, changed kernel).
    """
    import keras

    model = keras.applications.InceptionV3(
        include_top=False, weights=None, pooling=None, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3)
    )
    model.load_weights(fixture_pair.keras_weights)
    convolutions = [i for i, layer in enumerate(model.layers) if isinstance(layer, keras.layers.Conv2D)]
    layer_index = convolutions[PERTURBED_CONV]
    kernel = model.layers[layer_index].kernel
    weight_index = next(i for i, weight in enumerate(model.weights) if weight is kernel)

    original = np.asarray(kernel.numpy())
    changed = original.copy()
    changed[0, 0, 0, 0] += PERTURBATION
    kernel.assign(changed)
    path = tmp_path_factory.mktemp("perturbed") / "perturbed.weights.h5"
    model.save_weights(str(path))
    return path, layer_index, weight_index, original, changed


def test_perturbed_layer_named(fixture_pair, fixture_extractors, perturbed_weights, tmp_path, capsys):
    path, layer_index, weight_index, original, changed = perturbed_weights
    json_path = tmp_path / "pairs.json"
    argv = ["--hub_model", fixture_pair.hub_model, "--keras_weights", str(path), "--json", str(json_path)]

    assert compare_weights.main(argv) == compare_weights.EXIT_DIFFERENT
    printed = capsys.readouterr().out
    written = json.loads(json_path.read_text())
    different = [pair for pair in written["pairs"] if not pair["identical"]]
    assert len(different) == 1
    pair = different[0]

    # Keras numbers unnamed layers per process, so the command's model has other layer
    # names than this test's. Positions and the hub variable name stay the same.
    hub_variables = fixture_extractors[0].variables
    assert pair["keras_index"] == weight_index
    assert pair["keras_layer"].endswith(f"(Conv2D, #{layer_index})")
    layer_name = pair["keras_layer"].split(" ")[0]
    assert pair["keras_path"] == f"{layer_name}/kernel"
    assert pair["hub_index"] == weight_index
    assert pair["hub_name"] == hub_variables[weight_index].name
    assert pair["shape"] == list(original.shape)
    expected_diff = float(np.abs(changed.astype(np.float64) - original.astype(np.float64)).max())
    assert pair["max_abs_diff"] == expected_diff
    assert pair["relative_diff"] == pytest.approx(expected_diff / np.abs(changed.astype(np.float64)).max())

    assert written["identical"] == len(hub_variables) - 1
    assert f"{len(hub_variables) - 1} identical, 1 differ, 0 unmatched" in printed
    assert pair["keras_path"] in printed


def test_reordered_hub_variables_matched_by_value():
    rng = np.random.default_rng(0)
    values = [rng.standard_normal((3, 4)).astype(np.float32) for _ in range(3)]
    keras = tensors(*values, layer="dense (Dense)")
    hub = tensors(values[2], values[0], values[1])
    result = compare_weights.compare_weights(keras, hub)
    assert result["identical"] == 3
    assert [pair.hub_index for pair in result["pairs"]] == [1, 2, 0]
    assert {pair.matched_by for pair in result["pairs"]} == {compare_weights.MATCHED_BY_VALUE}


def test_changed_tensors_paired_by_shape_order():
    keras = tensors(np.ones((2, 2)), np.zeros(5), np.full((2, 2), 3.0), layer="conv (Conv2D)")
    hub = tensors(np.zeros(5), np.full((2, 2), 1.5), np.full((2, 2), 2.0))
    result = compare_weights.compare_weights(keras, hub)
    pairs = result["pairs"]
    assert [pair.hub_index for pair in pairs] == [1, 0, 2]
    assert [pair.identical for pair in pairs] == [False, True, False]
    assert [pair.matched_by for pair in pairs] == ["shape order", "value", "shape order"]
    assert pairs[0].max_abs_diff == 0.5
    assert pairs[0].relative_diff == 0.5
    assert pairs[2].max_abs_diff == 1.0
    assert pairs[2].relative_diff == pytest.approx(1.0 / 3.0)


def test_unmatched_shapes_reported_on_both_sides():
    keras = tensors(np.ones(3), np.ones((4, 4)))
    hub = tensors(np.ones(3), np.ones(7), np.ones(7))
    result = compare_weights.compare_weights(keras, hub)
    assert [tensor.name for tensor in result["unmatched_keras"]] == ["t1"]
    assert [tensor.index for tensor in result["unmatched_hub"]] == [1, 2]
    text = compare_weights.format_comparison(result)
    assert text.splitlines()[0] == "1 identical, 0 differ, 3 unmatched (1 Keras, 2 hub)"
    assert "#1 t1 [4, 4]" in text


def test_zero_keras_tensor_relative_diff_is_inf():
    result = compare_weights.compare_weights(tensors(np.zeros(4)), tensors(np.full(4, 0.5)))
    pair = result["pairs"][0]
    assert pair.max_abs_diff == 0.5
    assert pair.relative_diff == float("inf")
    assert compare_weights.comparison_json(result)["pairs"][0]["relative_diff"] == "inf"


def test_dtype_change_is_not_identical():
    result = compare_weights.compare_weights(tensors(np.ones(4, np.float32)), tensors(np.ones(4, np.float64)))
    pair = result["pairs"][0]
    assert pair.identical is False
    assert pair.max_abs_diff == 0.0
