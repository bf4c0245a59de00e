"""The fixture pair's cache: reuse, and clean-up after a killed build."""

import os
import time

from transforms import fixture


def test_stale_build_folder_removed(tmp_path):
    stale = tmp_path / ".building-old"
    stale.mkdir()
    (stale / "partial.weights.h5").write_bytes(b"x" * 100)
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    fresh = tmp_path / ".building-now"
    fresh.mkdir()
    pair = tmp_path / "fixture-v1-seed1"
    pair.mkdir()

    fixture.remove_stale_builds(str(tmp_path))

    assert not stale.exists()
    assert fresh.exists()
    assert pair.exists()


def test_cached_pair_is_reused(fixture_pair):
    again = fixture.ensure_fixture_pair(fixture_pair.identity["seed"])
    assert again.keras_weights == fixture_pair.keras_weights
    assert again.identity == fixture_pair.identity
