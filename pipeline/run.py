"""`inception-parity run`: checks the models, runs the pipeline, promotes its files,
checks the accounting, writes the manifest and prints a summary.

Exit codes (also in the README):
  0  the run finished; its manifest is written
  1  the pipeline failed while running; whole files stay in staging for --incremental
  2  invalid flags, --input not found or matching no files, --output a file, a reused
     --run_id, or a --device GPU that does not exist
  3  a model cannot be loaded (no image was read)
  4  the run finished, but more than --max_error_fraction of its images became errors
  5  the run finished, but matched files != features + errors + skipped
  6  another run is writing to the same --output
  130  interrupted (Ctrl-C); whole files stay in staging for --incremental
"""

import contextlib
import fcntl
import logging
import os
import platform
import sys
import time
from datetime import datetime, timezone

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from pipeline.graph import build_pipeline
from pipeline.options import DEFAULT_LOCAL_RUNNER, configure_logging, parse_job_args
from pipeline.preflight import check_models, resolve_spec
from pipeline.summary import format_summary, summarize_run
from transforms.devices import DeviceNotFoundError, check_device_exists, configure_threads
from transforms.incremental import extraction_key, known_images, recover_incomplete_runs
from transforms.models import ModelLoadError
from transforms.output import RunPaths, new_run_id, promote_run, write_manifest
from transforms.progress import ProgressCounter, ProgressMonitor
from transforms.read import (
    check_local_input,
    list_image_paths,
    output_folder_to_exclude,
    resolve_input_pattern,
)

_LOGGER = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_PIPELINE_FAILED = 1
EXIT_USAGE = 2
EXIT_MODEL_LOAD = 3
EXIT_TOO_MANY_ERRORS = 4
EXIT_ACCOUNTING = 5
EXIT_OUTPUT_LOCKED = 6
EXIT_INTERRUPTED = 130


class OutputLockedError(RuntimeError):
    """Another run holds the lock of the same --output folder."""


class UsageError(ValueError):
    """Flags that cannot work together with what is on disk; exit status 2."""


class PipelineFailedError(RuntimeError):
    """The Beam pipeline raised while running; its whole files stay in staging."""


def library_versions():
    import apache_beam
    import keras
    import numpy
    import PIL
    import pyarrow
    import tensorflow
    import tensorflow_hub

    return {
        "python": platform.python_version(),
        "tensorflow": tensorflow.__version__,
        "keras": keras.__version__,
        "tensorflow_hub": tensorflow_hub.__version__,
        "apache_beam": apache_beam.__version__,
        "numpy": numpy.__version__,
        "pyarrow": pyarrow.__version__,
        "pillow": PIL.__version__,
    }


def _beam_options(beam_args):
    options = PipelineOptions(beam_args)
    if not options.view_as(StandardOptions).runner:
        # DirectRunner would first try to download the Prism runner; the in-process
        # FnApiRunner runs offline and honours --direct_num_workers.
        options.view_as(StandardOptions).runner = DEFAULT_LOCAL_RUNNER
    return options


def _local_worker_processes(options):
    """Counts the processes that run DoFns on this machine (more than one only in multi_processing)."""
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode != "multi_processing":
        return 1
    return direct.direct_num_workers or os.cpu_count() or 1


def _intra_op_threads(job, options):
    """TF threads per worker process: the flag, or the CPUs shared among local processes."""
    if job.intra_op_threads is not None:
        return job.intra_op_threads
    processes = _local_worker_processes(options)
    return 0 if processes == 1 else max(1, (os.cpu_count() or 1) // processes)


@contextlib.contextmanager
def _output_lock(output):
    """Holds OUTPUT/.inception-parity.lock for a local output; remote outputs get none."""
    if "://" in output:
        yield
        return
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, ".inception-parity.lock"), "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise OutputLockedError(
                f"another inception-parity run is writing to {output!r}; wait for it to finish"
            ) from err
        yield


def _check_output(paths):
    """Raises UsageError when --output is a file or the run id was used there before."""
    output = paths.output
    if "://" not in output and os.path.exists(output) and not os.path.isdir(output):
        raise UsageError(f"--output {output!r} is a file; pass a folder")
    existing_paths = [paths.manifest, paths.table_folder("features"), paths.staging_root]
    if any(FileSystems.exists(path) for path in existing_paths):
        raise UsageError(
            f"run id {paths.run_id!r} already exists under {output!r}; pass a new --run_id or leave "
            "it out to get a fresh one"
        )


def _counter(result, name):
    query = result.metrics().query(MetricsFilter().with_namespace("inception_parity").with_name(name))
    return sum((counter.committed or counter.attempted or 0) for counter in query["counters"])


def _write_report(paths):
    """Writes report/ for the run; a failed report is logged and does not fail the run."""
    from pipeline.report import format_report_text, write_run_report

    try:
        return format_report_text(write_run_report(paths.output, paths.run_id))
    except (OSError, ValueError) as err:
        _LOGGER.warning("Could not write the report of run %s: %s", paths.run_id, err)
        return f"No report: {err}"


def _precisions(job):
    return job.hub_precision or job.precision, job.keras_precision or job.precision


def run(argv=None, test_pipeline=None):
    """Runs one extraction and returns its manifest (a dict with "exit_code").

    test_pipeline: a beam.Pipeline to build into instead of a new one (tests).
    """
    job, beam_args = parse_job_args(argv)
    check_local_input(job.input)
    options = _beam_options(beam_args)
    run_id = job.run_id or new_run_id()
    paths = RunPaths(job.output, run_id)
    _check_output(paths)
    pattern, _ = resolve_input_pattern(job.input)

    # Thread counts only take effect before TensorFlow's first operation in a process.
    intra_op_threads = _intra_op_threads(job, options)
    if _local_worker_processes(options) == 1:
        configure_threads(intra_op_threads)
    check_device_exists(job.device)

    # Both models must load before any image is read.
    hub_precision, keras_precision = _precisions(job)
    spec, fixture_identity = resolve_spec(job, hub_precision, keras_precision)
    try:
        model_identities = check_models(spec)
    except ModelLoadError as err:
        if job.models != "fixture":
            raise
        folder = os.path.dirname(spec.keras_weights)
        raise ModelLoadError(
            f"{err}\nThe cached fixture pair in {folder!r} is damaged: delete that folder, and the "
            "next run builds it again."
        ) from err
    model_identities.update(fixture_identity)
    key = extraction_key(model_identities, job.resize_filter)

    with _output_lock(job.output):
        return _run_locked(
            job, options, paths, pattern, spec, model_identities, key, intra_op_threads, test_pipeline
        )


def _run_locked(job, options, paths, pattern, spec, model_identities, key, intra_op_threads, test_pipeline):
    known = None
    recovered = []
    if job.incremental:
        recovered = recover_incomplete_runs(job.output)
        known = known_images(job.output, key)
        _LOGGER.info("Incremental run: %d images already have features", len(known))

    run_metadata = {
        "run_id": paths.run_id,
        "started_at": datetime.now(timezone.utc).isoformat(),
        "input": job.input,
        "input_pattern": pattern,
        "flags": dict(vars(job)),
        "beam_options": options.get_all_options(drop_default=True, retain_unknown_options=True),
        "models": model_identities,
        "extraction_key": key,
        "versions": library_versions(),
    }
    _LOGGER.info("Starting run %s over %s", paths.run_id, pattern)

    # Run the pipeline; its files land in staging.
    started = time.perf_counter()
    progress_folder = os.path.join(paths.staging_root, "progress") if "://" not in paths.output else None
    extract_options = {"intra_op_threads": intra_op_threads}
    if progress_folder:
        extract_options["progress"] = ProgressCounter(progress_folder)
    pipeline = test_pipeline or beam.Pipeline(options=options)
    build_pipeline(pipeline, job, spec, paths, run_metadata, known, extract_options)
    monitor = (
        ProgressMonitor(
            progress_folder,
            lambda: len(list_image_paths(job.input, output_folder_to_exclude(job.output))) - len(known or ()),
        )
        if progress_folder
        else contextlib.nullcontext()
    )
    with monitor:
        try:
            result = pipeline.run()
            result.wait_until_finish()
        except Exception as err:  # noqa: BLE001 - Beam wraps worker failures in many types
            raise PipelineFailedError(f"the pipeline failed: {type(err).__name__}: {err}") from err
    pipeline_secs = time.perf_counter() - started

    # Promote the staged files, then check that every matched file is accounted for.
    counts = promote_run(paths, run_metadata)
    counts["matched"] = _counter(result, "files_matched")
    counts["extractor_loads"] = _counter(result, "extractor_loads")
    counts["recovered_runs"] = recovered
    accounted = counts["features"] + counts["errors"] + counts["skipped"]
    attempted = counts["features"] + counts["errors"]
    error_fraction = counts["errors"] / attempted if attempted else 0.0

    exit_code, exit_reason = EXIT_OK, None
    if counts["matched"] == 0:
        exit_code = EXIT_USAGE
        exit_reason = f"--input {job.input!r} matched no files"
    elif accounted != counts["matched"]:
        exit_code = EXIT_ACCOUNTING
        exit_reason = (
            f"accounting mismatch: {counts['matched']} files matched, but {counts['features']} features + "
            f"{counts['errors']} errors + {counts['skipped']} skipped = {accounted}"
        )
    elif error_fraction > job.max_error_fraction:
        exit_code = EXIT_TOO_MANY_ERRORS
        exit_reason = (
            f"{counts['errors']} of {attempted} images failed ({100 * error_fraction:.1f}%), "
            f"more than --max_error_fraction {job.max_error_fraction:g}"
        )
    if exit_reason:
        _LOGGER.error("Run %s ends with exit status %d: %s", paths.run_id, exit_code, exit_reason)

    manifest = dict(run_metadata, complete=True, finished_at=datetime.now(timezone.utc).isoformat())
    manifest["counts"] = counts
    manifest["accounting_ok"] = accounted == counts["matched"]
    manifest["error_fraction"] = error_fraction
    manifest["exit_code"] = exit_code
    manifest["exit_reason"] = exit_reason
    manifest["timings"] = {"pipeline_secs": round(pipeline_secs, 3)}
    write_manifest(paths, manifest)

    summary = summarize_run(paths)
    summary.update(counts)
    manifest["summary_text"] = format_summary(summary, paths)
    if not job.no_report:
        manifest["summary_text"] += "\n" + _write_report(paths)
    if exit_reason:
        manifest["summary_text"] += f"\nExit status {exit_code}: {exit_reason}"
    return manifest


def main(argv=None):
    """Console entry of `inception-parity run`; returns the exit code."""
    configure_logging()
    argv = sys.argv[1:] if argv is None else argv
    try:
        manifest = run(argv)
    except SystemExit as exit_:
        # argparse exits with 2 on invalid flags and 0 for --help.
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    except (FileNotFoundError, UsageError, DeviceNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except ModelLoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_MODEL_LOAD
    except OutputLockedError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_OUTPUT_LOCKED
    except PipelineFailedError as err:
        _LOGGER.error("%s", err, exc_info=err.__cause__)
        _LOGGER.error("Whole files written so far stay in staging; rerun with --incremental to keep them")
        return EXIT_PIPELINE_FAILED
    except KeyboardInterrupt:
        print(
            "interrupted: whole files written so far stay in staging; rerun with --incremental to keep them",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    print(manifest["summary_text"])
    return manifest["exit_code"]
