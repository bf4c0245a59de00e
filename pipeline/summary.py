"""Counts and divergence of one finished run, read back from its Parquet files."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from transforms import columns
from transforms.output import list_files


def read_run_table(paths, table, column_names=None):
    """Reads one table of one run (features, errors or skipped) as a pyarrow Table."""
    tables = []
    for path in list_files(paths.table_folder(table)):
        with FileSystems.open(path) as handle:
            tables.append(pq.read_table(handle, columns=column_names))
    if not tables:
        return None
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def summarize_run(paths):
    """Counts rows of each table and takes the median and worst divergence.

    Returns:
      dict with features, errors and skipped counts, and for features the median and
      worst cosine_similarity and max_abs_diff (None when there are no features).
    """
    features = read_run_table(paths, "features", ["cosine_similarity", "max_abs_diff"])
    errors = read_run_table(paths, "errors", [columns.PATH])
    skipped = read_run_table(paths, "skipped", [columns.PATH])
    summary = {
        "features": 0 if features is None else features.num_rows,
        "errors": 0 if errors is None else errors.num_rows,
        "skipped": 0 if skipped is None else skipped.num_rows,
        "cosine_similarity_median": None,
        "cosine_similarity_min": None,
        "max_abs_diff_median": None,
        "max_abs_diff_max": None,
    }
    if summary["features"]:
        cosine = features.column("cosine_similarity").to_numpy()
        max_abs = features.column("max_abs_diff").to_numpy()
        summary.update(
            cosine_similarity_median=float(np.median(cosine)),
            cosine_similarity_min=float(cosine.min()),
            max_abs_diff_median=float(np.median(max_abs)),
            max_abs_diff_max=float(max_abs.max()),
        )
    return summary


def _images(count):
    return f"{count} image" if count == 1 else f"{count} images"


def format_summary(summary, paths):
    """Formats the end-of-run lines a person reads."""
    lines = [
        f"Run {paths.run_id}: {_images(summary['features'])} done, {summary['errors']} failed, "
        f"{summary['skipped']} skipped (of {summary.get('matched', '?')} files matched)"
    ]
    if summary["features"]:
        lines.append(
            "Divergence hub vs Keras: cosine similarity median "
            f"{summary['cosine_similarity_median']:.8f}, worst {summary['cosine_similarity_min']:.8f}; "
            f"max abs diff median {summary['max_abs_diff_median']:.3g}, "
            f"worst {summary['max_abs_diff_max']:.3g}"
        )
    lines.append(f"Output: {paths.output} (features/, errors/, skipped/ under run={paths.run_id})")
    lines.append(f"Manifest: {paths.manifest}")
    return "\n".join(lines)
