"""Incremental runs: which images already have features for the same extraction, and
recovery of the whole files that killed runs left in staging."""

import hashlib
import json
import logging
from datetime import datetime, timezone

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms import columns
from transforms.output import (
    RUN_METADATA_KEY,
    RunPaths,
    incomplete_run_ids,
    list_files,
    promote_run,
    read_manifests,
    write_manifest,
)

_LOGGER = logging.getLogger(__name__)

SKIPPED_TAG = "skipped"


def extraction_key(model_identities, resize_filter):
    """Hashes what decides the feature values: model files, pooling, precision, resizing.

    Paths and handles are left out, so a model moved to another folder keeps its key.
    """
    hub = model_identities["hub"]
    keras = model_identities["keras"]
    deciding = {
        "hub": [hub["format"], hub["fingerprint"], hub["precision"]],
        "keras": [keras["sha256"], keras["pooling"], keras["precision"]],
        "resize_filter": resize_filter,
    }
    return hashlib.sha256(json.dumps(deciding, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def image_key(path, sha256):
    return f"{path}\0{sha256}"


def known_images(output, key):
    """Returns {image_key: run_id} of every image with features in a finished run of key."""
    known = {}
    for run_id, manifest in sorted(read_manifests(output).items()):
        if manifest.get("extraction_key") != key:
            continue
        for path in list_files(RunPaths(output, run_id).table_folder("features")):
            with FileSystems.open(path) as handle:
                table = pq.read_table(handle, columns=[columns.PATH, columns.SHA256])
            for image_path, sha256 in zip(
                table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True
            ):
                known.setdefault(image_key(image_path, sha256), run_id)
    return known


def recover_incomplete_runs(output):
    """Promotes the whole files of runs that never finished into their partitions.

    Each such run gets a manifest marked "complete": false, so that an incremental run
    counts its images as done instead of extracting them again. Returns the run ids.
    """
    recovered = []
    for run_id in incomplete_run_ids(output):
        paths = RunPaths(output, run_id)
        run_metadata = _staged_run_metadata(paths)
        counts = promote_run(paths, run_metadata)
        manifest = dict(
            run_metadata,
            complete=False,
            recovered_at=datetime.now(timezone.utc).isoformat(),
            counts=counts,
        )
        write_manifest(paths, manifest)
        _LOGGER.warning(
            "Recovered run %s, which did not finish: %d features rows kept", run_id, counts["features"]
        )
        recovered.append(run_id)
    return recovered


def _staged_run_metadata(paths):
    for table in ("features", "errors", "skipped"):
        staged = list_files(paths.staging_folder(table))
        if staged:
            with FileSystems.open(staged[0]) as handle:
                metadata = pq.read_schema(handle).metadata or {}
            if RUN_METADATA_KEY in metadata:
                return json.loads(metadata[RUN_METADATA_KEY])
    return {"run_id": paths.run_id}


class SkipKnownImagesFn(beam.DoFn):
    """Drops decoded images that already have features; they become skipped rows.

    Side input known: {image_key: run_id}.
    """

    def __init__(self):
        self._skipped = Metrics.counter("inception_parity", "images_already_extracted")

    def process(self, image, known):
        run_id = known.get(image_key(image[columns.PATH], image[columns.SHA256]))
        if run_id is None:
            yield image
            return
        self._skipped.inc()
        yield beam.pvalue.TaggedOutput(
            SKIPPED_TAG,
            {columns.PATH: image[columns.PATH], columns.REASON: f"already has features in run {run_id}"},
        )
