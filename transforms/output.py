"""Parquet output: where each run's tables go, the run metadata stored with them, and the
manifest that marks a run complete.

Layout under --output:
  features/run=RUN_ID/part-SSSSS-of-NNNNN.parquet
  errors/run=RUN_ID/part-...parquet
  skipped/run=RUN_ID/part-...parquet
  runs/RUN_ID.json        written last: a run without it is incomplete
"""

import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import WriteToParquet

# Schema metadata key of the run metadata JSON in every Parquet file.
RUN_METADATA_KEY = b"inception_parity.run"
PARQUET_CODEC = "zstd"
RUN_PARTITION = "run"


def new_run_id(now=None):
    """A sortable, unique run id: UTC start time plus 6 random hex digits."""
    now = now or datetime.now(timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class RunPaths:
    output: str
    run_id: str

    def table_folder(self, table):
        return FileSystems.join(self.output, table, f"{RUN_PARTITION}={self.run_id}")

    @property
    def manifest(self):
        return FileSystems.join(self.output, "runs", f"{self.run_id}.json")


def schema_with_metadata(schema, run_metadata):
    return schema.with_metadata({RUN_METADATA_KEY: json.dumps(run_metadata, sort_keys=True)})


class WriteTable(beam.PTransform):
    """Writes dict rows to zstd Parquet files in one table's run partition."""

    def __init__(self, paths, table, schema, run_metadata):
        super().__init__()
        self._prefix = FileSystems.join(paths.table_folder(table), "part")
        self._schema = schema_with_metadata(schema, run_metadata)

    def expand(self, rows):
        return rows | WriteToParquet(
            self._prefix,
            schema=self._schema,
            codec=PARQUET_CODEC,
            file_name_suffix=".parquet",
            shard_name_template="-SSSSS-of-NNNNN",
        )


def write_manifest(paths, manifest):
    """Writes runs/RUN_ID.json; until it exists, readers treat the run as incomplete."""
    text = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")
    if "://" not in paths.manifest:
        os.makedirs(os.path.dirname(paths.manifest), exist_ok=True)
        staging = paths.manifest + ".tmp"
        with open(staging, "wb") as handle:
            handle.write(text)
        os.replace(staging, paths.manifest)
        return
    with FileSystems.create(paths.manifest) as handle:
        handle.write(text)
