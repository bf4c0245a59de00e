"""`inception-parity report`: dataset-level divergence statistics, worst images, determinism flags and
plots of one run, written to OUTPUT/report/run=RUN_ID/ (summary.json, report.md and PNG plots)."""

import argparse
import io
import json
import logging
import math
import os
import sys

import numpy as np
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline.options import configure_logging, positive_integer
from pipeline.summary import read_run_table
from transforms import columns
from transforms.output import RUN_METADATA_KEY, RunPaths, list_files

_LOGGER = logging.getLogger(__name__)

REPORT_TABLE = "report"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
COSINE_PLOT = "cosine_similarity_hist.png"
RELATIVE_L2_PLOT = "relative_l2_hist.png"
WORST_SCATTER_PLOT = "worst_image_scatter.png"
DEFAULT_WORST_N = 10

# Per-image max absolute differences between the features of two separately loaded
# extractors, from the run's determinism check. Tables of older runs lack these columns,
# and runs without the check leave them null.
RERUN_COLUMNS = (columns.HUB_RERUN_MAX_ABS, columns.KERAS_RERUN_MAX_ABS)

# Percentiles use numpy's default linear interpolation.
PERCENTILES = {"p50": 50, "p95": 95, "p99": 99}
TABLES = ("features", "errors", "skipped")
_NULL_SUFFIX = ".null"
HISTOGRAM_BINS = 50

EXIT_OK = 0
EXIT_USAGE = 2


class RunNotFoundError(FileNotFoundError):
    """No run to report on: no manifest under OUTPUT/runs/, or no tables for the run id."""


def write_run_report(output, run_id, worst_n=DEFAULT_WORST_N):
    """Writes summary.json, report.md and the plots of one run under OUTPUT/report/run=RUN_ID/.

    Returns:
      The summary dict that summary.json contains (JSON-ready).

    Raises:
      RunNotFoundError: the run has no features, errors or skipped Parquet files.
    """
    paths = RunPaths(output, run_id)
    folder = paths.table_folder(REPORT_TABLE)

    # Tables of the run, and the run metadata stored in their schema.
    files = {table: list_files(paths.table_folder(table)) for table in TABLES}
    if not any(files.values()):
        raise RunNotFoundError(
            f"No Parquet files for run {run_id!r} under {output!r} (looked in "
            f"{', '.join(paths.table_folder(table) for table in TABLES)}). Pass a --run_id "
            "listed under runs/, or run `inception-parity run` first."
        )
    run_metadata = _read_run_metadata(files)
    features = _read_feature_scalars(paths, files["features"])

    # Statistics, worst images and the determinism check.
    summary = {
        "run_id": run_id,
        "output": output,
        "report_folder": folder,
        "counts": _count_rows(paths, features),
        "run": _describe_run(run_metadata),
        "models": None if run_metadata is None else run_metadata.get("models"),
        "statistics": {name: column_statistics(features[name]) for name in columns.DIVERGENCE_COLUMNS},
        "worst_images": worst_images(features, worst_n),
        "determinism": _determinism(features, worst_n),
        "complete": _run_is_complete(paths),
    }

    # Plots, then the two text files.
    summary["plots"] = _write_plots(files["features"], features, summary["worst_images"], folder)
    _write_text(FileSystems.join(folder, SUMMARY_FILE), json.dumps(summary, indent=2, allow_nan=False))
    _write_text(FileSystems.join(folder, REPORT_FILE), format_report_markdown(summary))
    _LOGGER.info("Wrote the report of run %s to %s", run_id, folder)
    return summary


def _run_is_complete(paths):
    """Tells whether a run finished: False only when its manifest has "complete": false."""
    if not FileSystems.exists(paths.manifest):
        return True
    with FileSystems.open(paths.manifest) as handle:
        return json.loads(handle.read().decode("utf-8")).get("complete", True)


_INCOMPLETE_WARNING = (
    "This run did not finish: it was killed, and its whole files were recovered by a later "
    "--incremental run. The statistics cover only the images it completed."
)


def _read_run_metadata(files):
    """Returns the run metadata dict of the first Parquet file that stores it, or None."""
    for table in TABLES:
        for path in files[table]:
            with FileSystems.open(path) as handle:
                metadata = pq.read_schema(handle).metadata or {}
            if RUN_METADATA_KEY in metadata:
                return json.loads(metadata[RUN_METADATA_KEY])
    return None


def _read_feature_scalars(paths, feature_files):
    """Reads path, the divergence columns and any rerun columns of the features table.

    Returns:
      dict column name → numpy array [N]: path as object strings, the rest float64.
      Rerun columns are present only when the table has them. Their nulls (images not
      rerun) become NaN, and a bool array [N] under "<column>.null" marks them.
    """
    column_names = [columns.PATH, *columns.DIVERGENCE_COLUMNS]
    if feature_files:
        with FileSystems.open(feature_files[0]) as handle:
            available = set(pq.read_schema(handle).names)
        column_names += [name for name in RERUN_COLUMNS if name in available]
    table = read_run_table(paths, "features", column_names) if feature_files else None

    if table is None:
        empty = {name: np.zeros(0, dtype=np.float64) for name in columns.DIVERGENCE_COLUMNS}
        return {columns.PATH: np.zeros(0, dtype=object), **empty}
    scalars = {columns.PATH: np.asarray(table.column(columns.PATH).to_pylist(), dtype=object)}
    for name in column_names[1:]:
        column = table.column(name)
        scalars[name] = column.to_numpy(zero_copy_only=False).astype(np.float64)
        if name in RERUN_COLUMNS:
            scalars[f"{name}{_NULL_SUFFIX}"] = column.is_null().to_numpy(zero_copy_only=False)
    return scalars


def _determinism(features, worst_n):
    flags = {}
    for name in RERUN_COLUMNS:
        values = features.get(name)
        not_checked = features.get(f"{name}{_NULL_SUFFIX}")
        flags[name] = rerun_flags(values, not_checked, features[columns.PATH], worst_n)
    return flags


def _count_rows(paths, features):
    counts = {"features": int(len(features[columns.PATH]))}
    for table in ("errors", "skipped"):
        rows = read_run_table(paths, table, [columns.PATH])
        counts[table] = 0 if rows is None else rows.num_rows
    return counts


def _describe_run(run_metadata):
    if run_metadata is None:
        return None
    keys = ("input", "input_pattern", "started_at", "flags", "versions")
    return {key: run_metadata.get(key) for key in keys}


def column_statistics(values):
    """Computes mean, min, p50, p95, p99 and max of the finite values of one column.

    Args:
      values: float64 array [N].

    Returns:
      dict with count (N), finite (how many are finite), nan, posinf and neginf counts,
      and the six statistics over the finite values (None when none is finite).
    """
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    stats = {
        "count": int(values.size),
        "finite": int(finite.size),
        "nan": int(np.isnan(values).sum()),
        "posinf": int(np.isposinf(values).sum()),
        "neginf": int(np.isneginf(values).sum()),
    }
    if finite.size == 0:
        return dict(stats, mean=None, min=None, p50=None, p95=None, p99=None, max=None)

    percentiles = np.percentile(finite, list(PERCENTILES.values()))
    stats.update(mean=float(finite.mean()), min=float(finite.min()))
    stats.update({key: float(value) for key, value in zip(PERCENTILES, percentiles, strict=True)})
    stats["max"] = float(finite.max())
    return stats


def worst_images(features, worst_n):
    """Lists the worst_n images with the lowest cosine similarity, worst first.

    Ties go to the larger max_abs_diff, then to the path. NaN cosine counts as the worst.

    Returns:
      list of dicts with rank (1 = worst), path, cosine_similarity and max_abs_diff.
    """
    cosine = features["cosine_similarity"]
    max_abs = features["max_abs_diff"]
    paths = features[columns.PATH]
    # np.lexsort sorts by the last key first.
    order = np.lexsort((paths, -np.nan_to_num(max_abs, nan=np.inf), np.nan_to_num(cosine, nan=-np.inf)))
    return [
        {
            "rank": rank,
            "path": str(paths[index]),
            "cosine_similarity": _json_number(cosine[index]),
            "max_abs_diff": _json_number(max_abs[index]),
        }
        for rank, index in enumerate(order[:worst_n], start=1)
    ]


def rerun_flags(values, not_checked, paths, worst_n):
    """Flags every checked image whose rerun difference is not zero; NaN counts as not zero.

    Args:
      values: float64 array [N] of one rerun column, or None when the table lacks it.
      not_checked: bool array [N], True where the column is null (the image was not rerun).
      paths: object array [N] of image paths.

    Returns:
      {"present": False} without the column. Otherwise present, checked (rows with a
      value), non_zero (count), max (over the finite values, None when none is finite)
      and worst: up to worst_n dicts of path and value, largest first, NaN first of all.
    """
    if values is None:
        return {"present": False}
    checked = ~not_checked
    flagged = np.flatnonzero(checked & ~(values == 0))
    order = flagged[np.argsort(-np.nan_to_num(values[flagged], nan=np.inf), kind="stable")]
    finite = values[checked & np.isfinite(values)]
    return {
        "present": True,
        "checked": int(checked.sum()),
        "non_zero": int(flagged.size),
        "max": float(finite.max()) if finite.size else None,
        "worst": [{"path": str(paths[i]), "value": _json_number(values[i])} for i in order[:worst_n]],
    }


def _json_number(value):
    """Returns a float, or "nan", "inf" or "-inf", which strict JSON cannot hold as numbers."""
    value = float(value)
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "nan"
    return "inf" if value > 0 else "-inf"


def _write_plots(feature_files, features, worst, folder):
    """Writes the three PNG plots that have data, and removes stale ones that have none.

    Returns:
      dict plot name → {"file": name under folder} or {"file": None, "reason": why not}.
    """
    try:
        import matplotlib  # noqa: F401 - the "report" extra; plots are skipped without it
    except ImportError:
        reason = (
            "matplotlib is not installed; install the report extra: pip install 'inception-parity[report]'"
        )
        _LOGGER.warning("No plots for the report: %s", reason)
        return {name: {"file": None, "reason": reason} for name in _PLOT_FILES}

    # Histograms of two divergence columns over the finite values.
    images = {}
    for name, column in (
        ("cosine_similarity_histogram", "cosine_similarity"),
        ("relative_l2_histogram", "relative_l2"),
    ):
        values = features[column]
        finite = values[np.isfinite(values)]
        images[name] = (_histogram_png(finite, column, values.size), f"no finite {column} values to plot")

    # Hub against Keras features of the worst image.
    vectors = _read_feature_vectors(feature_files, worst[0]["path"]) if worst else None
    scatter = None if vectors is None else _scatter_png(*vectors, worst[0])
    images["worst_image_scatter"] = (scatter, "no feature rows, so there is no worst image")

    # Write what was drawn; a plot without data leaves no file behind.
    plots = {}
    for name, (png, reason) in images.items():
        path = FileSystems.join(folder, _PLOT_FILES[name])
        if png is None:
            _remove_if_exists(path)
            plots[name] = {"file": None, "reason": reason}
        else:
            _write_bytes(path, png)
            plots[name] = {"file": _PLOT_FILES[name]}
    return plots


_PLOT_FILES = {
    "cosine_similarity_histogram": COSINE_PLOT,
    "relative_l2_histogram": RELATIVE_L2_PLOT,
    "worst_image_scatter": WORST_SCATTER_PLOT,
}


def _new_figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A Figure with its own Agg canvas leaves pyplot's global backend and state alone.
    figure = Figure(figsize=(7.0, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _png_bytes(figure):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _histogram_png(finite, column, total):
    """Draws a histogram of finite float64 values [M]; returns PNG bytes, or None when M is 0."""
    if finite.size == 0:
        return None
    figure = _new_figure()
    axes = figure.add_subplot()
    axes.hist(finite, bins=_histogram_bins(finite), color="tab:blue", edgecolor="black", linewidth=0.3)
    axes.set_xlabel(column)
    axes.set_ylabel("images")
    low, high = float(finite.min()), float(finite.max())
    axes.set_title(f"{column}: {finite.size} finite of {total} images, min {low!r}, max {high!r}", fontsize=9)
    return _png_bytes(figure)


def _histogram_bins(finite):
    """Returns HISTOGRAM_BINS, or one bin edge pair when the values are too close for more.

    Bin edges must be distinct float64 values, so a spread of a few ulps (cosine values
    of 1.0 and 0.9999999999999998, say) gets a single bin around the values.
    """
    low, high = float(finite.min()), float(finite.max())
    scale = max(abs(low), abs(high), np.finfo(np.float64).tiny)
    if high - low > _MIN_RELATIVE_SPAN * scale:
        return HISTOGRAM_BINS
    pad = scale * _MIN_RELATIVE_SPAN
    return [low - pad, high + pad]


# A spread below this, relative to the values, is drawn as one bin (see _histogram_bins).
_MIN_RELATIVE_SPAN = 1e-12


def _scatter_png(hub, keras, worst):
    """Draws Keras against hub feature values of one image (float32 [2048] each); returns PNG bytes."""
    figure = _new_figure()
    axes = figure.add_subplot()
    axes.scatter(hub, keras, s=4, alpha=0.5, color="tab:blue", label="feature values")
    low = float(min(hub.min(), keras.min()))
    high = float(max(hub.max(), keras.max()))
    axes.plot([low, high], [low, high], color="tab:red", linewidth=0.8, label="keras = hub")
    axes.set_xlabel("hub feature value")
    axes.set_ylabel("Keras feature value")
    axes.legend(loc="upper left", fontsize=8)
    axes.set_title(
        f"Worst image {os.path.basename(worst['path'])}: cosine {worst['cosine_similarity']}, "
        f"max abs diff {worst['max_abs_diff']}",
        fontsize=9,
    )
    return _png_bytes(figure)


def _read_feature_vectors(feature_files, image_path):
    """Reads one image's hub and Keras vectors (float32 [2048] each), or None when it is missing.

    The filter reads only that image's row group data, not every vector of the run.
    """
    for path in feature_files:
        with FileSystems.open(path) as handle:
            table = pq.read_table(
                handle,
                columns=[columns.HUB_FEATURES, columns.KERAS_FEATURES],
                filters=[(columns.PATH, "==", image_path)],
            )
        if table.num_rows:
            hub = np.asarray(table.column(columns.HUB_FEATURES)[0].as_py(), dtype=np.float32)
            keras = np.asarray(table.column(columns.KERAS_FEATURES)[0].as_py(), dtype=np.float32)
            return hub, keras
    _LOGGER.warning(
        "Features of %s not found in %d features files; no scatter plot", image_path, len(feature_files)
    )
    return None


def _write_bytes(path, data):
    with FileSystems.create(path) as handle:
        handle.write(data)


def _write_text(path, text):
    _write_bytes(path, text.encode("utf-8"))


def _remove_if_exists(path):
    if FileSystems.exists(path):
        FileSystems.delete([path])


def format_report_markdown(summary):
    """Formats report.md from a summary dict of write_run_report."""
    counts = summary["counts"]
    lines = [f"# Run report {summary['run_id']}", ""]
    if not summary.get("complete", True):
        lines += [f"**{_INCOMPLETE_WARNING}**", ""]
    run = summary["run"]
    if run is not None:
        lines += [f"Input: `{run['input']}`, started at {run['started_at']}.", ""]

    # Counts and model identities.
    lines += ["## Counts", "", "| table | rows |", "| --- | --- |"]
    lines += [f"| {table} | {counts[table]} |" for table in TABLES]
    lines += ["", "## Models", ""]
    if summary["models"] is None:
        lines.append("No run metadata found in the Parquet schemas, so the model identities are unknown.")
    else:
        lines += ["```json", json.dumps(summary["models"], indent=2, sort_keys=True), "```"]

    if counts["features"] == 0:
        lines += ["", "No feature rows in this run: no statistics, worst images or plots.", ""]
        return "\n".join(lines)
    lines += _statistics_markdown(summary["statistics"], counts["features"])
    lines += _worst_markdown(summary["worst_images"])
    lines += _determinism_markdown(summary["determinism"])
    lines += _plots_markdown(summary["plots"])
    return "\n".join(lines)


def _statistics_markdown(statistics, feature_count):
    keys = ("mean", "min", "p50", "p95", "p99", "max")
    lines = [
        "",
        f"## Divergence statistics over {feature_count} images",
        "",
        "Statistics cover the finite values; percentiles interpolate linearly (numpy's default).",
        "",
        f"| column | {' | '.join(keys)} | non-finite |",
        f"| --- |{' --- |' * (len(keys) + 1)}",
    ]
    for column, stats in statistics.items():
        cells = " | ".join(_format_number(stats[key]) for key in keys)
        lines.append(f"| {column} | {cells} | {_non_finite_text(stats)} |")
    return lines


def _non_finite_text(stats):
    parts = [f"{stats[key]} {key}" for key in ("nan", "posinf", "neginf") if stats[key]]
    return ", ".join(parts) if parts else "0"


def _worst_markdown(worst):
    lines = [
        "",
        f"## Worst {len(worst)} images (lowest cosine similarity)",
        "",
        "| rank | path | cosine_similarity | max_abs_diff |",
        "| --- | --- | --- | --- |",
    ]
    for image in worst:
        lines.append(
            f"| {image['rank']} | `{image['path']}` | {_format_number(image['cosine_similarity'])} "
            f"| {_format_number(image['max_abs_diff'])} |"
        )
    return lines


def _determinism_markdown(determinism):
    lines = ["", "## Determinism (rerun differences)", ""]
    for column, flags in determinism.items():
        lines.append(f"- {_determinism_text(column, flags)}")
        for image in flags.get("worst", []):
            lines.append(f"  - `{image['path']}`: {_format_number(image['value'])}")
    return lines


def _determinism_text(column, flags):
    if not flags["present"]:
        return f"{column}: not in the features table, so this run did not check determinism."
    if flags["checked"] == 0:
        return f"{column}: null for every image, so this run did not check determinism."
    if flags["non_zero"] == 0:
        return f"{column}: all {flags['checked']} checked images gave identical features on the rerun."
    return (
        f"{column}: NOT DETERMINISTIC on {flags['non_zero']} of {flags['checked']} checked images "
        f"(max difference {_format_number(flags['max'])})."
    )


def _plots_markdown(plots):
    lines = ["", "## Plots", ""]
    for name, plot in plots.items():
        if plot["file"] is None:
            lines.append(f"- {name}: not drawn ({plot['reason']}).")
        else:
            lines.append(f"![{name}]({plot['file']})")
    lines.append("")
    return lines


def _format_number(value):
    """Formats a float exactly (shortest repr), and passes "nan", "inf" and None through as text."""
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    return repr(float(value))


def format_report_text(summary):
    """Formats the few lines printed at the end of a run or by `inception-parity report`."""
    counts = summary["counts"]
    report_path = FileSystems.join(summary["report_folder"], REPORT_FILE)
    lines = [
        f"Report of run {summary['run_id']}: {counts['features']} images, {counts['errors']} errors, "
        f"{counts['skipped']} skipped; written to {report_path}"
    ]
    if not summary.get("complete", True):
        lines.append(_INCOMPLETE_WARNING)
    if counts["features"] == 0:
        lines.append("No feature rows: no divergence statistics, worst images or plots.")
        return "\n".join(lines)

    # Headline statistics and the worst image.
    stats = summary["statistics"]
    cosine, relative, max_abs = stats["cosine_similarity"], stats["relative_l2"], stats["max_abs_diff"]
    lines.append(
        f"cosine_similarity min {_format_number(cosine['min'])}, p50 {_format_number(cosine['p50'])}; "
        f"relative_l2 p50 {_format_number(relative['p50'])}, p99 {_format_number(relative['p99'])}, "
        f"max {_format_number(relative['max'])}; max_abs_diff max {_format_number(max_abs['max'])}"
    )
    worst = summary["worst_images"][0]
    lines.append(
        f"Worst image: {worst['path']} (cosine_similarity {_format_number(worst['cosine_similarity'])}, "
        f"max_abs_diff {_format_number(worst['max_abs_diff'])})"
    )

    # Warnings a reader must not miss.
    non_finite = [
        f"{column} {_non_finite_text(s)}" for column, s in stats.items() if s["finite"] < s["count"]
    ]
    if non_finite:
        lines.append(f"Non-finite values (left out of the statistics): {'; '.join(non_finite)}")
    for column, flags in summary["determinism"].items():
        if flags["present"] and flags["checked"]:
            lines.append(_determinism_text(column, flags))
    return "\n".join(lines)


def newest_complete_run(output):
    """Returns the run id of the newest manifest under OUTPUT/runs/ (by finished_at, then run id).

    Raises:
      RunNotFoundError: there is no readable manifest.
    """
    pattern = FileSystems.join(output, "runs", "*.json")
    candidates = []
    for path in list_files(FileSystems.join(output, "runs"), "*.json"):
        run_id = os.path.basename(path)[: -len(".json")]
        try:
            with FileSystems.open(path) as handle:
                finished_at = json.loads(handle.read()).get("finished_at") or ""
        except (OSError, ValueError) as err:
            _LOGGER.warning("Skipping the unreadable manifest %s: %s", path, err)
            continue
        candidates.append((finished_at, run_id))
    if not candidates:
        raise RunNotFoundError(
            f"No complete run under {output!r}: no manifest matches {pattern!r}. Check --output, "
            "or pass --run_id to report on a run that has no manifest yet."
        )
    return max(candidates)[1]


def build_parser(prog="inception-parity report"):
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Write the divergence statistics, worst images, determinism flags and plots of "
        "one run to OUTPUT/report/run=RUN_ID/ (summary.json, report.md, PNG files).",
    )
    parser.add_argument("--output", required=True, help="The --output folder of `inception-parity run`.")
    parser.add_argument(
        "--run_id", help="Run to report on (default: the newest complete run, by its runs/*.json manifest)."
    )
    parser.add_argument(
        "--worst_n",
        type=positive_integer,
        default=DEFAULT_WORST_N,
        help="Number of images listed as worst, and of paths listed per determinism flag "
        "(default: %(default)s).",
    )
    return parser


def main(argv=None):
    """Console entry of `inception-parity report`; returns the exit code (0 written, 2 no such run)."""
    configure_logging()
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run_id = args.run_id or newest_complete_run(args.output)
        if args.run_id and not FileSystems.exists(RunPaths(args.output, run_id).manifest):
            _LOGGER.warning("Run %s has no manifest: it is incomplete or still running", run_id)
        summary = write_run_report(args.output, run_id, args.worst_n)
    except RunNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(format_report_text(summary))
    return EXIT_OK
