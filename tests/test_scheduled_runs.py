"""Unattended runs: accounting and exit status, determinism, incremental runs, a killed
run resumed, parallel worker processes, and the output lock."""

import fcntl
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline import run as run_module
from tests.conftest import PHOTOS_DIR, REPO_ROOT, image_files, run_job

pytestmark = pytest.mark.slow


def make_crops(folder, count, seed=0):
    """Writes count JPEG crops of the real photos into folder; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = [Image.open(path).convert("RGB") for path in image_files(PHOTOS_DIR)]
    paths = []
    for index in range(count):
        photo = photos[index % len(photos)]
        width, height = photo.size
        crop_width, crop_height = int(width * rng.uniform(0.4, 0.9)), int(height * rng.uniform(0.4, 0.9))
        left, top = int(rng.integers(0, width - crop_width)), int(rng.integers(0, height - crop_height))
        path = folder / f"crop_{index:03d}.jpg"
        photo.crop((left, top, left + crop_width, top + crop_height)).save(path, quality=90)
        paths.append(str(path))
    return paths


def features_by_path(output, run_id=None):
    table = pd.read_parquet(output / "features")
    if run_id is not None:
        table = table[table["run"] == run_id]
    return table.set_index("path").sort_index()


def complete_manifests(output):
    return [json.loads(path.read_text()) for path in sorted((output / "runs").glob("*.json"))]


def test_two_runs_give_bitwise_equal_features(tmp_path, fixture_pair):
    first = run_job("--input", PHOTOS_DIR, "--output", tmp_path, "--models", "fixture")
    second = run_job("--input", PHOTOS_DIR, "--output", tmp_path, "--models", "fixture")
    one, two = features_by_path(tmp_path, first["run_id"]), features_by_path(tmp_path, second["run_id"])
    assert list(one.index) == list(two.index)
    for column in ("hub_features", "keras_features"):
        for path in one.index:
            assert np.array_equal(one.loc[path, column], two.loc[path, column]), (column, path)


def test_multi_process_run_matches_single_process(tmp_path, fixture_pair):
    single = run_job("--input", PHOTOS_DIR, "--output", tmp_path, "--models", "fixture")
    multi = run_job(
        "--input",
        PHOTOS_DIR,
        "--output",
        tmp_path,
        "--models",
        "fixture",
        "--direct_num_workers=2",
        "--direct_running_mode=multi_processing",
    )
    # Each worker process loads the pair once.
    assert multi["counts"]["extractor_loads"] == 2
    one, two = features_by_path(tmp_path, single["run_id"]), features_by_path(tmp_path, multi["run_id"])
    assert list(one.index) == list(two.index)
    for column in ("hub_features", "keras_features", "cosine_similarity", "width", "sha256"):
        for path in one.index:
            assert np.array_equal(one.loc[path, column], two.loc[path, column]), (column, path)


def test_error_fraction_sets_exit_status(tmp_path, fixture_pair, capsys):
    folder = tmp_path / "images"
    make_crops(folder, 3)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    common = ["--input", str(folder), "--models", "fixture"]

    # 1 error of 4 images is 25%: over 0.2, under 0.3.
    assert run_module.main([*common, "--output", str(tmp_path / "a"), "--max_error_fraction", "0.2"]) == 4
    assert "Exit status 4" in capsys.readouterr().out
    assert run_module.main([*common, "--output", str(tmp_path / "b"), "--max_error_fraction", "0.3"]) == 0

    (manifest,) = complete_manifests(tmp_path / "a")
    assert manifest["counts"]["features"] == 3
    assert manifest["counts"]["errors"] == 1
    assert manifest["accounting_ok"] is True
    assert manifest["exit_code"] == 4


def test_incremental_run_skips_known_images(tmp_path, fixture_pair):
    folder = tmp_path / "images"
    make_crops(folder, 3)
    output = tmp_path / "out"
    first = run_job("--input", folder, "--output", output, "--models", "fixture")
    make_crops(tmp_path / "more", 1, seed=7)
    os.replace(tmp_path / "more" / "crop_000.jpg", folder / "new.jpg")
    second = run_job("--input", folder, "--output", output, "--models", "fixture", "--incremental")

    assert second["counts"]["features"] == 1
    assert second["counts"]["skipped"] == 3
    skipped = pd.read_parquet(output / "skipped")
    reasons = set(skipped[skipped["run"] == second["run_id"]]["reason"])
    assert reasons == {f"already has features in run {first['run_id']}"}
    everything = pd.read_parquet(output / "features")
    assert sorted(everything["path"]) == sorted(str(path) for path in folder.iterdir())


def test_changed_content_is_extracted_again(tmp_path, fixture_pair):
    folder = tmp_path / "images"
    (path,) = make_crops(folder, 1)
    output = tmp_path / "out"
    run_job("--input", folder, "--output", output, "--models", "fixture")
    Image.open(path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(path, quality=90)
    second = run_job("--input", folder, "--output", output, "--models", "fixture", "--incremental")
    assert second["counts"]["features"] == 1


def test_killed_run_resumes_with_every_image_once(tmp_path, fixture_pair):
    folder = tmp_path / "images"
    expected = make_crops(folder, 24)
    output = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "run",
        "--input",
        str(folder),
        "--output",
        str(output),
        "--models",
        "fixture",
        "--batch_size",
        "2",
        "--rows_per_file",
        "2",
    ]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )

    # Kill it once a few batches are on disk, long before all 24 images are done.
    deadline = time.monotonic() + 600
    staged = output / "_staging"
    while time.monotonic() < deadline:
        if len(list(staged.glob("run=*/features/*.parquet"))) >= 2:
            break
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (output / "runs").exists(), "the run finished before it was killed"
    assert not (output / "features").exists(), "readers must not see an unfinished run"

    resumed = run_job("--input", folder, "--output", output, "--models", "fixture", "--incremental")
    (recovered_id,) = resumed["counts"]["recovered_runs"]
    recovered_rows = features_by_path(output, recovered_id)
    assert len(recovered_rows) >= 4
    assert resumed["counts"]["features"] == len(expected) - len(recovered_rows)

    everything = pd.read_parquet(output / "features")
    assert sorted(everything["path"]) == sorted(expected)
    assert not everything["path"].duplicated().any()

    from pipeline.report import write_run_report

    assert write_run_report(str(output), recovered_id)["complete"] is False


def test_locked_output_exits_with_status_6(tmp_path, fixture_pair):
    output = tmp_path / "out"
    output.mkdir()
    with open(output / ".inception-parity.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        status = run_module.main(["--input", str(PHOTOS_DIR), "--output", str(output), "--models", "fixture"])
    assert status == 6
    assert not (output / "features").exists()


def test_missing_input_exits_with_status_2(tmp_path, capsys):
    status = run_module.main(["--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out")])
    assert status == 2
    assert "not found" in capsys.readouterr().err


def test_output_inside_input_is_never_read(tmp_path, fixture_pair):
    folder = tmp_path / "images"
    make_crops(folder, 2)
    output = folder / "features_out"
    run_job("--input", folder, "--output", output, "--models", "fixture")
    second = run_job("--input", folder, "--output", output, "--models", "fixture")
    assert second["counts"]["matched"] == 2
    assert second["counts"]["features"] == 2
    assert second["counts"]["skipped"] == 0


def test_relative_glob_stores_absolute_paths(tmp_path, fixture_pair, monkeypatch):
    folder = tmp_path / "images"
    make_crops(folder, 1)
    monkeypatch.chdir(tmp_path)
    run_job("--input", "images/*.jpg", "--output", "out", "--models", "fixture")
    features = pd.read_parquet(tmp_path / "out" / "features")
    assert list(features["path"]) == [str(folder / "crop_000.jpg")]


def test_reused_run_id_exits_with_status_2(tmp_path, fixture_pair, capsys):
    args = ["--input", str(PHOTOS_DIR / "rocket.jpg"), "--output", str(tmp_path), "--models", "fixture"]
    assert run_module.main([*args, "--run_id", "nightly"]) == 0
    assert run_module.main([*args, "--run_id", "nightly"]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("run_id", ["../escape", "a/b", ".hidden", ""])
def test_run_id_with_separators_rejected(tmp_path, run_id):
    status = run_module.main(["--input", str(PHOTOS_DIR), "--output", str(tmp_path), "--run_id", run_id])
    assert status == 2


def test_output_that_is_a_file_exits_with_status_2(tmp_path, capsys):
    target = tmp_path / "out.txt"
    target.write_text("not a folder")
    assert run_module.main(["--input", str(PHOTOS_DIR), "--output", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_missing_gpu_exits_with_status_2_before_loading(tmp_path, capsys, monkeypatch):
    import pipeline.preflight

    def fail(*args, **kwargs):
        raise AssertionError("models must not load when the device does not exist")

    monkeypatch.setattr(pipeline.preflight, "check_models", fail)
    status = run_module.main(["--input", str(PHOTOS_DIR), "--output", str(tmp_path), "--device", "gpu:3"])
    assert status == 2
    assert "pass --device auto or cpu" in capsys.readouterr().err


def test_glob_matching_nothing_exits_with_status_2(tmp_path, fixture_pair, capsys):
    status = run_module.main(
        ["--input", str(PHOTOS_DIR / "*.webp"), "--output", str(tmp_path), "--models", "fixture"]
    )
    assert status == 2
    assert "matched no files" in capsys.readouterr().out


def test_damaged_fixture_cache_says_to_delete_it(tmp_path, fixture_pair, monkeypatch, capsys):
    import shutil

    from transforms.fixture import FIXTURE_VERSION

    cache = tmp_path / "cache"
    folder = cache / f"fixture-v{FIXTURE_VERSION}-seed1234"
    shutil.copytree(os.path.dirname(fixture_pair.keras_weights), folder)
    weights = folder / os.path.basename(fixture_pair.keras_weights)
    weights.write_bytes(weights.read_bytes()[:1000])
    monkeypatch.setenv("INCEPTION_PARITY_CACHE", str(cache))
    status = run_module.main(
        ["--input", str(PHOTOS_DIR), "--output", str(tmp_path / "out"), "--models", "fixture"]
    )
    assert status == 3
    assert f"The cached fixture pair in {str(folder)!r} is damaged" in capsys.readouterr().err
