"""--check_determinism: a second, separately loaded pair of extractors reruns every batch."""

import pandas as pd
import pytest

from tests.conftest import SAMPLES_DIR, run_job
from tests.model_files import write_noisy_hub_model

pytestmark = pytest.mark.slow


def test_fixture_pair_reruns_are_identical(tmp_path, fixture_pair):
    run_job("--input", SAMPLES_DIR, "--output", tmp_path, "--models", "fixture", "--check_determinism")
    features = pd.read_parquet(tmp_path / "features")
    assert len(features) == 5
    assert (features["hub_rerun_max_abs"] == 0.0).all()
    assert (features["keras_rerun_max_abs"] == 0.0).all()


def test_noisy_extractor_shows_nonzero_rerun(tmp_path, fixture_pair):
    noisy = tmp_path / "noisy_hub"
    write_noisy_hub_model(noisy)
    output = tmp_path / "out"
    run_job(
        "--input",
        SAMPLES_DIR,
        "--output",
        output,
        "--hub_model",
        noisy,
        "--keras_weights",
        fixture_pair.keras_weights,
        "--check_determinism",
        "--max_error_fraction",
        "1",
    )
    features = pd.read_parquet(output / "features")
    assert (features["hub_rerun_max_abs"] > 0.0).all()
    assert (features["keras_rerun_max_abs"] == 0.0).all()


def test_rerun_columns_empty_without_flag(tmp_path, fixture_pair):
    run_job("--input", SAMPLES_DIR / "rocket.jpg", "--output", tmp_path, "--models", "fixture")
    features = pd.read_parquet(tmp_path / "features")
    assert features["hub_rerun_max_abs"].isna().all()
    assert features["keras_rerun_max_abs"].isna().all()
