"""The run report: statistics recomputed from the Parquet files, worst images, determinism flags,
plots, zero-feature runs and the `report` command."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import report
from tests.conftest import PHOTOS_DIR, image_files, run_job
from transforms import columns, divergence
from transforms.output import RUN_METADATA_KEY, RunPaths, schema_with_metadata

RUN_ID = "20260101T000000Z-aaaaaa"
MODELS = {"hub": {"handle": "hub-under-test"}, "keras": {"weights": "keras-under-test", "pooling": "avg"}}
RUN_METADATA = {
    "run_id": RUN_ID,
    "input": "/images",
    "started_at": "2026-01-01T00:00:00+00:00",
    "models": MODELS,
}
IMAGE_COUNT = 40
ZERO_HUB_ROW = 7


def feature_rows(count=IMAGE_COUNT, seed=0):
    """Feature rows with divergence from transforms/divergence.py.

    Row ZERO_HUB_ROW, when there is one, has a zero hub vector, so its relative_l2 is inf.
    """
    rng = np.random.default_rng(seed)
    hub = rng.random((count, columns.FEATURE_DIM), dtype=np.float32)
    noise = rng.normal(0.0, 1.0, hub.shape).astype(np.float32) * rng.random((count, 1), dtype=np.float32)
    keras = hub + noise
    if count > ZERO_HUB_ROW:
        hub[ZERO_HUB_ROW] = 0.0
    measures = divergence.divergence_columns(hub, keras)
    rows = []
    for i in range(count):
        row = {
            columns.PATH: f"/images/img_{i:03d}.jpg",
            columns.SHA256: f"{i:064x}",
            columns.WIDTH: 640,
            columns.HEIGHT: 480,
            columns.FORMAT: "JPEG",
            columns.HUB_FEATURES: hub[i],
            columns.KERAS_FEATURES: keras[i],
            columns.DEVICE: "/CPU:0",
        }
        row.update({name: float(measures[name][i]) for name in columns.DIVERGENCE_COLUMNS})
        rows.append(row)
    return rows


def write_table(output, table, rows, schema, shards=1):
    """Writes rows as Parquet shards in the pipeline's layout, with the run metadata in the schema."""
    folder = output / table / f"run={RUN_ID}"
    folder.mkdir(parents=True, exist_ok=True)
    schema = schema_with_metadata(schema, RUN_METADATA)
    for shard in range(shards):
        part = rows[shard::shards]
        data = {name: [row[name] for row in part] for name in schema.names}
        pq.write_table(
            pa.Table.from_pydict(data, schema=schema), folder / f"part-{shard:05d}-of-{shards:05d}.parquet"
        )


def features_schema(rerun_columns):
    """FEATURES_SCHEMA with or without the two rerun columns, whichever the current schema has."""
    schema = columns.FEATURES_SCHEMA
    for name in report.RERUN_COLUMNS:
        if name in schema.names:
            schema = schema.remove(schema.get_field_index(name))
    if rerun_columns:
        for name in report.RERUN_COLUMNS:
            schema = schema.append(pa.field(name, pa.float64()))
    return schema


def write_run(output, rows, rerun_columns=False, errors=2, skipped=1):
    schema = features_schema(rerun_columns)
    write_table(output, "features", rows, schema, shards=2)
    error_rows = [
        {columns.PATH: f"/images/bad_{i}.jpg", columns.STAGE: "decode", columns.ERROR: "damaged"}
        for i in range(errors)
    ]
    write_table(output, "errors", error_rows, columns.ERRORS_SCHEMA)
    skipped_rows = [
        {columns.PATH: f"/images/notes_{i}.txt", columns.REASON: "not an image"} for i in range(skipped)
    ]
    write_table(output, "skipped", skipped_rows, columns.SKIPPED_SCHEMA)


def read_features(output):
    return pd.read_parquet(output / "features" / f"run={RUN_ID}")


@pytest.fixture()
def reported(tmp_path):
    write_run(tmp_path, feature_rows())
    summary = report.write_run_report(str(tmp_path), RUN_ID, worst_n=5)
    return tmp_path, summary


def report_folder(output):
    return output / "report" / f"run={RUN_ID}"


def test_statistics_equal_numpy_on_parquet(reported):
    output, _ = reported
    written = json.loads((report_folder(output) / report.SUMMARY_FILE).read_text())
    features = read_features(output)
    for column in columns.DIVERGENCE_COLUMNS:
        values = features[column].to_numpy(dtype=np.float64)
        finite = values[np.isfinite(values)]
        stats = written["statistics"][column]
        assert stats["count"] == IMAGE_COUNT, column
        assert stats["finite"] == finite.size, column
        assert stats["min"] == finite.min(), column
        assert stats["max"] == finite.max(), column
        assert stats["p50"] == np.percentile(finite, 50), column
        assert stats["p95"] == np.percentile(finite, 95), column
        assert stats["p99"] == np.percentile(finite, 99), column
        # Rows come back in another order, so the sum may differ in the last bits.
        assert stats["mean"] == pytest.approx(finite.mean(), rel=1e-12), column


def test_zero_hub_vector_counted_as_infinite(reported):
    _, summary = reported
    relative = summary["statistics"]["relative_l2"]
    assert relative["posinf"] == 1
    assert relative["finite"] == IMAGE_COUNT - 1
    assert "relative_l2 1 posinf" in report.format_report_text(summary)


def test_counts_and_models_from_metadata(reported):
    _, summary = reported
    assert summary["counts"] == {"features": IMAGE_COUNT, "errors": 2, "skipped": 1}
    assert summary["models"] == MODELS
    assert summary["run"]["input"] == "/images"


def test_worst_images_have_lowest_cosine(reported):
    output, summary = reported
    features = read_features(output)
    expected = features.nsmallest(5, "cosine_similarity")
    worst = summary["worst_images"]
    assert [image["path"] for image in worst] == list(expected[columns.PATH])
    assert [image["cosine_similarity"] for image in worst] == list(expected["cosine_similarity"])
    assert [image["max_abs_diff"] for image in worst] == list(expected["max_abs_diff"])
    # The zero hub vector has no direction in common with its Keras vector.
    assert worst[0]["path"] == f"/images/img_{ZERO_HUB_ROW:03d}.jpg"
    assert worst[0]["cosine_similarity"] == 0.0


def test_plots_are_non_blank_pngs(reported):
    output, summary = reported
    folder = report_folder(output)
    names = [report.COSINE_PLOT, report.RELATIVE_L2_PLOT, report.WORST_SCATTER_PLOT]
    assert sorted(plot["file"] for plot in summary["plots"].values()) == sorted(names)
    for name in names:
        with Image.open(folder / name) as image:
            assert image.format == "PNG", name
            assert image.width >= 300, name
            assert image.height >= 200, name
            pixels = np.asarray(image.convert("L"), dtype=np.float64)
        assert pixels.var() > 0, name


def test_markdown_lists_every_column(reported):
    output, _ = reported
    text = (report_folder(output) / report.REPORT_FILE).read_text()
    for column in columns.DIVERGENCE_COLUMNS:
        assert f"| {column} |" in text
    assert "hub_rerun_max_abs: not in the features table" in text
    assert f"![worst_image_scatter]({report.WORST_SCATTER_PLOT})" in text


def test_rerun_columns_flag_non_zero_values(tmp_path):
    rows = feature_rows(count=10)
    hub_rerun = [0.0] * 10
    hub_rerun[2], hub_rerun[5], hub_rerun[8] = 3e-7, float("nan"), 1e-3
    hub_rerun[9] = None
    for row, hub_value in zip(rows, hub_rerun, strict=True):
        row["hub_rerun_max_abs"] = hub_value
        row["keras_rerun_max_abs"] = 0.0
    write_run(tmp_path, rows, rerun_columns=True)

    summary = report.write_run_report(str(tmp_path), RUN_ID)
    hub_flags = summary["determinism"]["hub_rerun_max_abs"]
    assert hub_flags["present"] is True
    assert hub_flags["checked"] == 9
    assert hub_flags["non_zero"] == 3
    assert hub_flags["max"] == 1e-3
    # NaN first, then the largest difference.
    assert [image["path"] for image in hub_flags["worst"]] == [
        "/images/img_005.jpg",
        "/images/img_008.jpg",
        "/images/img_002.jpg",
    ]
    assert hub_flags["worst"][0]["value"] == "nan"
    assert summary["determinism"]["keras_rerun_max_abs"]["non_zero"] == 0
    text = report.format_report_text(summary)
    assert "hub_rerun_max_abs: NOT DETERMINISTIC on 3 of 9 checked images" in text
    assert "keras_rerun_max_abs: all 10 checked images gave identical features" in text


def test_all_null_rerun_columns_mean_not_checked(tmp_path):
    rows = feature_rows(count=10)
    for row in rows:
        row["hub_rerun_max_abs"] = None
        row["keras_rerun_max_abs"] = None
    write_run(tmp_path, rows, rerun_columns=True)

    summary = report.write_run_report(str(tmp_path), RUN_ID)
    for name in report.RERUN_COLUMNS:
        assert summary["determinism"][name] == {
            "present": True,
            "checked": 0,
            "non_zero": 0,
            "max": None,
            "worst": [],
        }
    markdown = (report_folder(tmp_path) / report.REPORT_FILE).read_text()
    assert "hub_rerun_max_abs: null for every image" in markdown
    assert "_rerun_max_abs" not in report.format_report_text(summary)


@pytest.mark.parametrize("with_empty_file", [True, False], ids=["empty-features-file", "no-features-file"])
def test_zero_feature_run_writes_no_plots(tmp_path, with_empty_file):
    if with_empty_file:
        write_run(tmp_path, [], errors=3, skipped=0)
    else:
        error_rows = [{columns.PATH: "/images/bad.jpg", columns.STAGE: "decode", columns.ERROR: "damaged"}]
        write_table(tmp_path, "errors", error_rows, columns.ERRORS_SCHEMA)

    summary = report.write_run_report(str(tmp_path), RUN_ID)
    folder = report_folder(tmp_path)
    assert summary["counts"]["features"] == 0
    assert summary["models"] == MODELS
    assert summary["worst_images"] == []
    assert all(plot["file"] is None for plot in summary["plots"].values())
    assert not list(folder.glob("*.png"))
    assert summary["statistics"]["cosine_similarity"]["p50"] is None
    assert "No feature rows in this run" in (folder / report.REPORT_FILE).read_text()
    assert "No feature rows" in report.format_report_text(summary)
    json.loads((folder / report.SUMMARY_FILE).read_text())


def test_run_without_tables_raises(tmp_path):
    with pytest.raises(report.RunNotFoundError, match="No Parquet files for run"):
        report.write_run_report(str(tmp_path), RUN_ID)


def write_manifest(output, run_id, finished_at):
    runs = output / "runs"
    runs.mkdir(exist_ok=True)
    (runs / f"{run_id}.json").write_text(json.dumps({"run_id": run_id, "finished_at": finished_at}))


def test_cli_reports_newest_complete_run(tmp_path, capsys):
    write_run(tmp_path, feature_rows(count=6))
    older = "20250101T000000Z-bbbbbb"
    write_manifest(tmp_path, older, "2025-01-01T00:10:00+00:00")
    write_manifest(tmp_path, RUN_ID, "2026-01-01T00:10:00+00:00")

    exit_code = report.main(["--output", str(tmp_path), "--worst_n", "3"])
    printed = capsys.readouterr().out
    assert exit_code == report.EXIT_OK
    assert f"Report of run {RUN_ID}: 6 images, 2 errors, 1 skipped" in printed
    summary = json.loads((report_folder(tmp_path) / report.SUMMARY_FILE).read_text())
    assert len(summary["worst_images"]) == 3


def test_cli_without_manifest_exits_2(tmp_path, capsys):
    assert report.main(["--output", str(tmp_path)]) == report.EXIT_USAGE
    assert "No complete run" in capsys.readouterr().err


@pytest.mark.slow
def test_report_of_pipeline_run(tmp_path, fixture_pair):
    manifest = run_job("--input", PHOTOS_DIR, "--output", tmp_path, "--models", "fixture", "--batch_size", 4)
    run_id = manifest["run_id"]
    assert report.newest_complete_run(str(tmp_path)) == run_id

    summary = report.write_run_report(str(tmp_path), run_id)
    assert summary["counts"]["features"] == len(image_files(PHOTOS_DIR))
    assert summary["statistics"]["max_abs_diff"]["max"] <= 1e-5
    assert summary["models"]["keras"]["pooling"] == "avg"
    folder = RunPaths(str(tmp_path), run_id).table_folder("report")
    scatter = f"{folder}/{report.WORST_SCATTER_PLOT}"
    with Image.open(scatter) as image:
        assert np.asarray(image.convert("L"), dtype=np.float64).var() > 0
    schema = pq.read_schema(next((tmp_path / "features").glob("run=*/*.parquet")))
    assert summary["models"] == json.loads(schema.metadata[RUN_METADATA_KEY])["models"]
