"""Divergence math against values worked out by hand."""

import math

import numpy as np
import pytest

from transforms import columns, divergence

# hub = (3, 4, 0), keras = (4, 3, 0): both norms 5, dot product 24, difference (-1, 1, 0).
HUB = np.array([3.0, 4.0, 0.0], dtype=np.float32)
KERAS = np.array([4.0, 3.0, 0.0], dtype=np.float32)


def test_cosine_similarity_by_hand():
    assert divergence.cosine_similarity(HUB, KERAS) == pytest.approx(24 / 25)


def test_l2_distance_by_hand():
    assert divergence.l2_distance(HUB, KERAS) == pytest.approx(math.sqrt(2))


def test_relative_l2_by_hand():
    assert divergence.relative_l2(HUB, KERAS) == pytest.approx(math.sqrt(2) / 5)


def test_max_and_mean_abs_diff_by_hand():
    assert divergence.max_abs_diff(HUB, KERAS) == pytest.approx(1.0)
    assert divergence.mean_abs_diff(HUB, KERAS) == pytest.approx(2 / 3)


def test_pearson_by_hand():
    # Means 7/3; centred vectors (2/3, 5/3, -7/3) and (5/3, 2/3, -7/3):
    # covariance sum 69/9, each spread sqrt(78/9), so r = 69/78.
    assert divergence.pearson(HUB, KERAS) == pytest.approx(69 / 78)


def test_sums_and_norms_by_hand():
    assert divergence.hub_sum(HUB, KERAS) == pytest.approx(7.0)
    assert divergence.keras_sum(HUB, KERAS) == pytest.approx(7.0)
    assert divergence.hub_norm(HUB, KERAS) == pytest.approx(5.0)
    assert divergence.keras_norm(HUB, KERAS) == pytest.approx(5.0)


def test_identical_vectors_agree_fully():
    vector = np.linspace(0.0, 2.0, 2048, dtype=np.float32)
    assert divergence.cosine_similarity(vector, vector) == pytest.approx(1.0)
    assert divergence.l2_distance(vector, vector) == 0.0
    assert divergence.relative_l2(vector, vector) == 0.0
    assert divergence.max_abs_diff(vector, vector) == 0.0
    assert divergence.pearson(vector, vector) == pytest.approx(1.0)


def test_both_zero_vectors_count_as_identical():
    zero = np.zeros(2048, dtype=np.float32)
    values = {name: float(fn(zero, zero)) for name, fn in divergence.DIVERGENCE_FUNCTIONS.items()}
    assert values["cosine_similarity"] == 1.0
    assert values["relative_l2"] == 0.0
    assert values["pearson"] == 1.0
    assert values["l2_distance"] == 0.0
    assert not any(math.isnan(value) for value in values.values())


def test_zero_hub_vector_against_nonzero_keras():
    zero = np.zeros(3, dtype=np.float32)
    assert divergence.cosine_similarity(zero, KERAS) == 0.0
    assert divergence.relative_l2(zero, KERAS) == math.inf
    assert divergence.pearson(zero, KERAS) == 0.0
    assert divergence.l2_distance(zero, KERAS) == pytest.approx(5.0)


def test_zero_keras_vector_against_nonzero_hub():
    zero = np.zeros(3, dtype=np.float32)
    assert divergence.cosine_similarity(HUB, zero) == 0.0
    assert divergence.relative_l2(HUB, zero) == pytest.approx(1.0)
    assert divergence.pearson(HUB, zero) == 0.0


def test_constant_unequal_vectors_are_uncorrelated():
    assert divergence.pearson(np.full(4, 2.0), np.full(4, 3.0)) == 0.0
    assert divergence.cosine_similarity(np.full(4, 2.0), np.full(4, 3.0)) == pytest.approx(1.0)


def test_batch_gives_one_value_per_row():
    hub = np.stack([HUB, np.zeros(3, dtype=np.float32)])
    keras = np.stack([KERAS, np.zeros(3, dtype=np.float32)])
    measures = divergence.divergence_columns(hub, keras)
    assert measures["cosine_similarity"].tolist() == pytest.approx([24 / 25, 1.0])
    assert measures["relative_l2"].tolist() == pytest.approx([math.sqrt(2) / 5, 0.0])


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        divergence.l2_distance(np.zeros(3), np.zeros(4))


def test_functions_cover_every_divergence_column():
    assert tuple(divergence.DIVERGENCE_FUNCTIONS) == columns.DIVERGENCE_COLUMNS


def test_equal_vectors_have_cosine_exactly_one():
    vector = np.random.default_rng(5).random(2048, dtype=np.float32)
    assert divergence.cosine_similarity(vector, vector) == 1.0
