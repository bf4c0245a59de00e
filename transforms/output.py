"""Parquet output: staged row files written by the workers, their promotion into a run
partition, the run manifest, and recovery of runs that were killed.

Layout under --output:
  _staging/run=RUN_ID/{features,errors,skipped}/part-*.parquet   while a run is going
  features/run=RUN_ID/part-*.parquet                             after it finished
  errors/run=RUN_ID/...    skipped/run=RUN_ID/...
  runs/RUN_ID.json         the manifest, written last: a run without one is incomplete

Workers write each file under a temporary name and rename it when it is whole, so a
killed run leaves only whole files in _staging. Readers of features/ never see a run
that is still going, because its files only move there once the pipeline has finished.
"""

import json
import logging
import os
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from transforms import columns

_LOGGER = logging.getLogger(__name__)

# Schema metadata key of the run metadata JSON in every Parquet file.
RUN_METADATA_KEY = b"inception_parity.run"
PARQUET_CODEC = "zstd"
RUN_PARTITION = "run"
STAGING = "_staging"
TABLES = {
    "features": columns.FEATURES_SCHEMA,
    "errors": columns.ERRORS_SCHEMA,
    "skipped": columns.SKIPPED_SCHEMA,
}
_TEMPORARY_PREFIX = ".tmp-"


def new_run_id(now=None):
    """Makes a sortable, unique run id: the UTC start time plus 6 random hex digits."""
    now = now or datetime.now(timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def _is_local(path):
    return "://" not in path


@dataclass(frozen=True)
class RunPaths:
    """Locations of one run's files under --output."""

    output: str
    run_id: str

    def table_folder(self, table):
        return FileSystems.join(self.output, table, f"{RUN_PARTITION}={self.run_id}")

    def staging_folder(self, table):
        return FileSystems.join(self.output, STAGING, f"{RUN_PARTITION}={self.run_id}", table)

    @property
    def staging_root(self):
        return FileSystems.join(self.output, STAGING, f"{RUN_PARTITION}={self.run_id}")

    @property
    def manifest(self):
        return FileSystems.join(self.output, "runs", f"{self.run_id}.json")


def schema_with_metadata(schema, run_metadata):
    return schema.with_metadata({RUN_METADATA_KEY: json.dumps(run_metadata, sort_keys=True)})


def rows_to_table(rows, schema):
    """Builds a pyarrow Table from dict rows; fixed-size list columns take numpy vectors."""
    arrays = []
    for field in schema:
        values = [row[field.name] for row in rows]
        if pa.types.is_fixed_size_list(field.type):
            flat = np.asarray(values, dtype=np.float32).reshape(-1)
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat), field.type.list_size))
        else:
            arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def write_table_file(table, folder):
    """Writes a zstd Parquet file into folder; it appears under its final name only whole."""
    name = f"part-{uuid.uuid4().hex}.parquet"
    # The temporary name ends otherwise, so no *.parquet listing ever picks it up.
    temporary = FileSystems.join(folder, f"{_TEMPORARY_PREFIX}{name}.inprogress")
    final = FileSystems.join(folder, name)
    if _is_local(folder):
        os.makedirs(folder, exist_ok=True)
    with FileSystems.create(temporary) as handle:
        pq.write_table(table, handle, compression=PARQUET_CODEC)
    FileSystems.rename([temporary], [final])
    return final


class WriteRowFilesFn(beam.DoFn):
    """Buffers dict rows and writes them to a staging folder, rows_per_file at a time.

    Files are flushed when the buffer is full and at the end of every bundle, so a run
    killed midway keeps all but the rows still in buffers.
    """

    def __init__(self, folder, schema, run_metadata, rows_per_file):
        self._folder = folder
        self._schema = schema_with_metadata(schema, run_metadata)
        self._rows_per_file = rows_per_file

    def start_bundle(self):
        self._rows = []

    def process(self, row):
        self._rows.append(row)
        if len(self._rows) >= self._rows_per_file:
            self._flush()

    def finish_bundle(self):
        self._flush()

    def _flush(self):
        if self._rows:
            write_table_file(rows_to_table(self._rows, self._schema), self._folder)
            self._rows = []


class WriteTable(beam.PTransform):
    """Writes dict rows of one table into this run's staging folder."""

    def __init__(self, paths, table, run_metadata, rows_per_file=512):
        super().__init__()
        self._fn = WriteRowFilesFn(paths.staging_folder(table), TABLES[table], run_metadata, rows_per_file)

    def expand(self, rows):
        return rows | beam.ParDo(self._fn)


def list_files(folder, pattern="*.parquet"):
    """Lists, sorted, the files under folder that match pattern; a missing folder gives [].

    FileSystems.exists is False for a folder on object stores such as GCS, so listings
    rely on the match alone instead of checking the folder first.
    """
    matched = FileSystems.match([FileSystems.join(folder, pattern)])[0].metadata_list
    return sorted(metadata.path for metadata in matched)


def _drop_repeated_paths(files):
    """Rewrites staged files so that no image path occurs twice (a retried bundle can
    write a batch again); the first occurrence is kept."""
    seen = set()
    for path in files:
        with FileSystems.open(path) as handle:
            table = pq.read_table(handle)
        image_paths = table.column(columns.PATH).to_pylist()
        keep = [image_path not in seen for image_path in image_paths]
        seen.update(image_paths)
        if all(keep):
            continue
        _LOGGER.warning("Dropping %d repeated rows from %s", keep.count(False), path)
        with FileSystems.create(path) as handle:
            pq.write_table(table.filter(pa.array(keep)), handle, compression=PARQUET_CODEC)


def promote_run(paths, run_metadata):
    """Moves a run's staged files into its partitions and gives every table at least one
    file, so that readers find every table's schema. Returns row counts per table."""
    counts = {}
    for table, schema in TABLES.items():
        staged = list_files(paths.staging_folder(table))
        _drop_repeated_paths(staged)
        destination = paths.table_folder(table)
        if _is_local(destination):
            os.makedirs(destination, exist_ok=True)
        if staged:
            FileSystems.rename(staged, [FileSystems.join(destination, _basename(path)) for path in staged])
        else:
            empty = schema_with_metadata(schema, run_metadata).empty_table()
            write_table_file(empty, destination)
        counts[table] = count_rows(destination)
    _remove_staging(paths)
    return counts


def count_rows(folder):
    total = 0
    for path in list_files(folder):
        with FileSystems.open(path) as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    return total


def _basename(path):
    return path.rstrip("/").rsplit("/", 1)[-1]


def _exists(path):
    return FileSystems.exists(path)


def _remove_staging(paths):
    if _exists(paths.staging_root):
        FileSystems.delete([paths.staging_root])
    staging = FileSystems.join(paths.output, STAGING)
    if _is_local(staging) and os.path.isdir(staging) and not os.listdir(staging):
        os.rmdir(staging)


def write_manifest(paths, manifest):
    """Writes runs/RUN_ID.json; until it exists, readers treat the run as incomplete."""
    text = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode("utf-8")
    if _is_local(paths.manifest):
        os.makedirs(os.path.dirname(paths.manifest), exist_ok=True)
        staging = paths.manifest + ".tmp"
        with open(staging, "wb") as handle:
            handle.write(text)
        os.replace(staging, paths.manifest)
        return
    with FileSystems.create(paths.manifest) as handle:
        handle.write(text)


def read_manifests(output):
    """Returns {run_id: manifest} for every complete run under output."""
    folder = FileSystems.join(output, "runs")
    manifests = {}
    for path in list_files(folder, "*.json"):
        with FileSystems.open(path) as handle:
            manifest = json.loads(handle.read().decode("utf-8"))
        manifests[manifest["run_id"]] = manifest
    return manifests


def incomplete_run_ids(output):
    """Run ids with staged files but no manifest: runs that were killed or failed."""
    staging = FileSystems.join(output, STAGING)
    complete = read_manifests(output)
    run_ids = set()
    for path in list_files(staging, "*/*/*.parquet"):
        partition = path[len(staging) :].strip("/").split("/", 1)[0]
        run_ids.add(partition.split("=", 1)[1])
    return sorted(run_ids - set(complete))
