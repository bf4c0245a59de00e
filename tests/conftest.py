"""Shared test fixtures: image folders, the fixture model pair, and a pipeline runner."""

import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SAMPLES_DIR = REPO_ROOT / "samples" / "photos"
# Real photos and odd-format files kept beside the repository (a checkout's ../shared).
SHARED_IMAGES = pathlib.Path(
    os.environ.get("INCEPTION_PARITY_SHARED_IMAGES", REPO_ROOT.parent / "shared" / "images")
)
PHOTOS_DIR = SHARED_IMAGES / "photos"
ODD_DIR = SHARED_IMAGES / "odd"


def image_files(folder):
    """Every regular file in folder, sorted; fails loudly when the folder is missing."""
    assert folder.is_dir(), f"test images not found at {folder}; set INCEPTION_PARITY_SHARED_IMAGES"
    return sorted(path for path in folder.iterdir() if path.is_file() and not path.name.endswith(".md"))


@pytest.fixture(scope="session")
def fixture_pair():
    """The seeded Keras weights and the hub SavedModel exported from them (cached on disk)."""
    from transforms.fixture import DEFAULT_FIXTURE_SEED, ensure_fixture_pair

    return ensure_fixture_pair(DEFAULT_FIXTURE_SEED)


@pytest.fixture(scope="session")
def fixture_extractors(fixture_pair):
    """(HubExtractor, KerasExtractor with avg pooling) loaded from the fixture pair."""
    from transforms.models import HubExtractor, KerasExtractor

    return HubExtractor(fixture_pair.hub_model), KerasExtractor(fixture_pair.keras_weights, "avg")


def run_job(*args):
    """Runs `inception-parity run` in-process with the given flags; returns the manifest."""
    from pipeline.run import run

    return run([str(arg) for arg in args])
