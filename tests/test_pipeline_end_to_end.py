"""The whole pipeline on the local runner over real photos and odd files, with the
fixture pair."""

import json

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.conftest import ODD_DIR, PHOTOS_DIR, image_files, run_job
from transforms import columns
from transforms.image_decode import decode_image
from transforms.output import RUN_METADATA_KEY
from transforms.preprocess import hub_input, keras_input

pytestmark = pytest.mark.slow


def read_table(output, table):
    return pd.read_parquet(output / table)


@pytest.fixture(scope="module")
def photos_run(tmp_path_factory, fixture_pair):
    output = tmp_path_factory.mktemp("photos_run")
    manifest = run_job("--input", PHOTOS_DIR, "--output", output, "--models", "fixture", "--batch_size", 4)
    return output, manifest


def test_every_photo_has_a_features_row(photos_run):
    output, manifest = photos_run
    features = read_table(output, "features")
    expected = sorted(str(path) for path in image_files(PHOTOS_DIR))
    assert sorted(features[columns.PATH]) == expected
    assert manifest["counts"]["features"] == len(expected)
    assert manifest["counts"]["errors"] == 0


def test_avg_pooling_fixture_pair_agrees(photos_run):
    output, _ = photos_run
    features = read_table(output, "features")
    assert features["max_abs_diff"].max() <= 1e-5
    assert features["cosine_similarity"].min() >= 0.99999


def test_features_equal_direct_model_calls(photos_run, fixture_extractors):
    output, _ = photos_run
    features = read_table(output, "features").set_index(columns.PATH)
    hub_extractor, keras_extractor = fixture_extractors
    path = PHOTOS_DIR / "rocket.jpg"
    pixels = decode_image(path.read_bytes()).pixels[np.newaxis]
    expected_hub = hub_extractor(hub_input(pixels))[0]
    expected_keras = keras_extractor(keras_input(pixels))[0]
    row = features.loc[str(path)]
    np.testing.assert_allclose(np.asarray(row[columns.HUB_FEATURES]), expected_hub, atol=1e-5)
    np.testing.assert_allclose(np.asarray(row[columns.KERAS_FEATURES]), expected_keras, atol=1e-5)


def test_features_schema_and_metadata(photos_run):
    output, manifest = photos_run
    files = sorted((output / "features").glob("run=*/*.parquet"))
    assert files
    schema = pq.read_schema(files[0])
    assert schema.remove_metadata().equals(columns.FEATURES_SCHEMA)
    assert pq.ParquetFile(files[0]).metadata.row_group(0).column(0).compression == "ZSTD"
    run_metadata = json.loads(schema.metadata[RUN_METADATA_KEY])
    assert run_metadata["run_id"] == manifest["run_id"]
    assert run_metadata["models"]["hub"]["format"] == "tf2-saved-model"
    assert run_metadata["models"]["keras"]["pooling"] == "avg"
    assert "tensorflow" in run_metadata["versions"]


def test_errors_and_skipped_schemas(photos_run):
    output, _ = photos_run
    for table, expected in (("errors", columns.ERRORS_SCHEMA), ("skipped", columns.SKIPPED_SCHEMA)):
        files = sorted((output / table).glob("run=*/*.parquet"))
        assert files, table
        assert pq.read_schema(files[0]).remove_metadata().equals(expected)


def test_duckdb_reads_output_without_glue(photos_run):
    output, manifest = photos_run
    pattern = str(output / "features" / "*" / "*.parquet")
    ((count, run_id, width),) = duckdb.sql(
        f"SELECT count(*), any_value(run), len(any_value(hub_features)) "
        f"FROM read_parquet('{pattern}', hive_partitioning = true)"
    ).fetchall()
    assert count == len(image_files(PHOTOS_DIR))
    assert run_id == manifest["run_id"]
    assert width == 2048


def test_manifest_written_last_with_counts(photos_run):
    output, manifest = photos_run
    on_disk = json.loads((output / "runs" / f"{manifest['run_id']}.json").read_text())
    assert on_disk["counts"]["matched"] == len(image_files(PHOTOS_DIR))
    assert on_disk["counts"]["extractor_loads"] >= 1


def test_max_pooling_clearly_diverges(tmp_path, fixture_pair):
    run_job("--input", PHOTOS_DIR, "--output", tmp_path, "--models", "fixture", "--keras_pooling", "max")
    features = read_table(tmp_path, "features")
    assert len(features) == len(image_files(PHOTOS_DIR))
    assert features["cosine_similarity"].max() < 0.99


def test_odd_folder_every_file_accounted_for(tmp_path, fixture_pair):
    manifest = run_job("--input", ODD_DIR, "--output", tmp_path, "--models", "fixture")
    features = read_table(tmp_path, "features")
    errors = read_table(tmp_path, "errors")
    accounted = sorted(list(features[columns.PATH]) + list(errors[columns.PATH]))
    assert accounted == sorted(str(path) for path in image_files(ODD_DIR))
    unreadable = errors.set_index(columns.PATH).loc[str(ODD_DIR / "multipage_rgb.tif")]
    assert unreadable[columns.STAGE] == "decode"
    assert "TIFF" in unreadable[columns.ERROR]
    assert manifest["counts"]["matched"] == len(accounted)
