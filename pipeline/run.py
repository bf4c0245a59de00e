"""`inception-parity run`: checks the models, runs the pipeline, writes the manifest and
prints a summary.

Exit codes (also in the README):
  0  the run finished and its manifest is written
  1  the pipeline failed while running
  2  invalid flags, or --input not found
  3  a model cannot be loaded (nothing was read)
"""

import logging
import platform
import sys
import time
from datetime import datetime, timezone

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline.graph import build_pipeline
from pipeline.options import DEFAULT_LOCAL_RUNNER, parse_job_args
from pipeline.preflight import check_models, resolve_spec
from pipeline.summary import format_summary, summarize_run
from transforms.models import ModelLoadError
from transforms.output import RunPaths, new_run_id, write_manifest
from transforms.read import check_local_input, resolve_input_pattern

_LOGGER = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_PIPELINE_FAILED = 1
EXIT_USAGE = 2
EXIT_MODEL_LOAD = 3


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


def _counter(result, name):
    query = result.metrics().query(MetricsFilter().with_namespace("inception_parity").with_name(name))
    return sum((counter.committed or counter.attempted or 0) for counter in query["counters"])


def run(argv=None, test_pipeline=None):
    """Runs one extraction. Returns the manifest dict; raises on failure.

    test_pipeline: a beam.Pipeline to build into instead of a new one (tests).
    """
    job, beam_args = parse_job_args(argv)
    check_local_input(job.input)
    run_id = job.run_id or new_run_id()
    paths = RunPaths(job.output, run_id)
    pattern, _ = resolve_input_pattern(job.input)

    spec, fixture_identity = resolve_spec(job)
    model_identities = check_models(spec)
    model_identities.update(fixture_identity)

    options = _beam_options(beam_args)
    run_metadata = {
        "run_id": run_id,
        "started_at": datetime.now(timezone.utc).isoformat(),
        "input": job.input,
        "input_pattern": pattern,
        "flags": {key: value for key, value in vars(job).items()},
        "beam_options": options.get_all_options(drop_default=True, retain_unknown_options=True),
        "models": model_identities,
        "versions": library_versions(),
    }
    _LOGGER.info("Starting run %s over %s", run_id, pattern)

    started = time.perf_counter()
    pipeline = test_pipeline or beam.Pipeline(options=options)
    build_pipeline(pipeline, job, spec, paths, run_metadata)
    result = pipeline.run()
    result.wait_until_finish()
    elapsed_secs = time.perf_counter() - started

    counts = summarize_run(paths)
    counts["matched"] = _counter(result, "files_matched")
    counts["extractor_loads"] = _counter(result, "extractor_loads")
    manifest = dict(run_metadata, finished_at=datetime.now(timezone.utc).isoformat())
    manifest["counts"] = counts
    manifest["timings"] = {"pipeline_secs": round(elapsed_secs, 3)}
    write_manifest(paths, manifest)
    manifest["summary_text"] = format_summary(counts, paths)
    return manifest


def main(argv=None):
    """Console entry of `inception-parity run`; returns the exit code."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    # Beam logs every shard rename and batch statistic at INFO; the job's own INFO lines
    # are what a person running it reads.
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    argv = sys.argv[1:] if argv is None else argv
    try:
        manifest = run(argv)
    except SystemExit as exit_:
        # argparse exits with 2 on invalid flags and 0 for --help.
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except ModelLoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_MODEL_LOAD
    print(manifest["summary_text"])
    return EXIT_OK
