"""The job's own command-line flags; everything else is passed on to Beam."""

import argparse
import logging
import re

from transforms.devices import DEVICE_CHOICES_HELP, parse_device
from transforms.fixture import DEFAULT_FIXTURE_SEED
from transforms.image_decode import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_RESIZE_FILTER, RESIZE_FILTERS
from transforms.models import DEFAULT_HUB_MODEL, IMAGENET, KERAS_POOLINGS, PRECISIONS

DEFAULT_BATCH_SIZE = 32
DEFAULT_LOCAL_RUNNER = "FnApiRunner"
DEFAULT_MAX_ERROR_FRACTION = 0.05
# A run id names a folder (run=RUN_ID) and a file (runs/RUN_ID.json): no separators.
_RUN_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")


def positive_integer(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, received {text}")
    return value


def fraction(text):
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, received {text}")
    return value


def non_negative_integer(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, received {text}")
    return value


def run_id(text):
    if not _RUN_ID.match(text):
        raise argparse.ArgumentTypeError(
            f"must be letters, digits, '.', '_' or '-', not starting with '.', received {text!r}"
        )
    return text


def device(text):
    try:
        return parse_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def add_model_flags(parser):
    """Adds the flags that name the two models (shared by run, explain and compare-weights).

    Returns the argument group, so that a command can add its own model flags to it.
    """
    models = parser.add_argument_group("models")
    models.add_argument(
        "--models",
        choices=(IMAGENET, "fixture"),
        default=IMAGENET,
        help="imagenet: the real models named by --hub_model and --keras_weights. fixture: "
        "a self-built pair with seeded weights, for offline runs and tests (default: %(default)s).",
    )
    models.add_argument(
        "--hub_model",
        default=None,
        help="TF Hub handle or local SavedModel folder, in TF2 or legacy TF1 Hub format "
        f"(default: {DEFAULT_HUB_MODEL}).",
    )
    models.add_argument(
        "--keras_weights",
        default=None,
        help="'imagenet' or a path to a Keras weights file for InceptionV3(include_top=False) "
        "(default: imagenet).",
    )
    models.add_argument(
        "--fixture_seed",
        type=non_negative_integer,
        default=DEFAULT_FIXTURE_SEED,
        help="Seed of the fixture pair's weights with --models fixture (default: %(default)s).",
    )
    return models


def check_model_flags(parser, args):
    """Exits through parser.error when --models fixture comes with explicit model paths."""
    if args.models == "fixture" and (args.hub_model or args.keras_weights):
        parser.error("--models fixture builds its own pair; drop --hub_model and --keras_weights")


def configure_logging():
    """Sets up INFO logging for a command; Beam's own INFO lines (shard renames, batch
    statistics) are left out."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    logging.getLogger("apache_beam").setLevel(logging.WARNING)


def build_parser(prog="inception-parity run"):
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Extract InceptionV3 features from every image under --input with both the "
            "TF Hub model and Keras InceptionV3, and write both vectors and their "
            "divergence to Parquet under --output. Flags not listed here go to Apache "
            "Beam (for example --runner, --direct_num_workers, --direct_running_mode); "
            f"the runner defaults to the local {DEFAULT_LOCAL_RUNNER}."
        ),
    )
    io_group = parser.add_argument_group("input and output")
    io_group.add_argument(
        "--input",
        required=True,
        help="Folder (searched recursively), glob or single file; local, gs:// or s3://. "
        "Image extensions are matched case-insensitively; hidden files are skipped.",
    )
    io_group.add_argument(
        "--output",
        required=True,
        help="Folder that receives features/, errors/, skipped/, runs/ and report/. Files under it "
        "are never read as input.",
    )
    io_group.add_argument(
        "--run_id",
        type=run_id,
        help="Name of this run's partition; it must be new under --output (default: UTC time + "
        "random suffix).",
    )
    io_group.add_argument(
        "--incremental",
        action="store_true",
        help="Skip images whose path and content hash already have features under --output "
        "for the same models and preprocessing; first recover the files of runs that were killed.",
    )
    io_group.add_argument(
        "--max_error_fraction",
        type=fraction,
        default=DEFAULT_MAX_ERROR_FRACTION,
        help="Exit with status 4 when more than this fraction of the images to process became "
        "errors; everything is still written (default: %(default)s).",
    )
    io_group.add_argument(
        "--rows_per_file",
        type=positive_integer,
        default=512,
        help="Rows per Parquet file a worker writes. Files are kept when a run is killed, so "
        "smaller files mean less work repeated by the next --incremental run (default: %(default)s).",
    )
    io_group.add_argument(
        "--no_report",
        action="store_true",
        help="Do not write report/ (statistics and plots) at the end of the run.",
    )

    models = add_model_flags(parser)
    models.add_argument(
        "--keras_pooling",
        choices=KERAS_POOLINGS,
        default="avg",
        help="Global pooling over Keras' 8x8x2048 map (default: %(default)s, as the hub model).",
    )

    processing = parser.add_argument_group("processing")
    processing.add_argument(
        "--resize_filter",
        choices=sorted(RESIZE_FILTERS),
        default=DEFAULT_RESIZE_FILTER,
        help="Pillow filter for resizing to 299x299 (default: %(default)s).",
    )
    processing.add_argument(
        "--max_image_pixels",
        type=positive_integer,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help="Images with more pixels (width x height, read from the header) become errors "
        "before they are decoded (default: %(default)s).",
    )
    processing.add_argument(
        "--batch_size",
        type=positive_integer,
        default=DEFAULT_BATCH_SIZE,
        help="Images per forward pass (default: %(default)s).",
    )
    processing.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="Precision of both forward passes; bfloat16 uses oneDNN's rewrite on CPUs, about twice "
        "as fast with AMX (default: %(default)s).",
    )
    processing.add_argument(
        "--hub_precision", choices=PRECISIONS, help="Precision of the hub model only (overrides --precision)."
    )
    processing.add_argument(
        "--keras_precision",
        choices=PRECISIONS,
        help="Precision of the Keras model only (overrides --precision).",
    )
    processing.add_argument(
        "--intra_op_threads",
        type=int,
        default=None,
        help="TensorFlow threads per worker process. Default: the CPU count divided by the number "
        "of local worker processes.",
    )
    processing.add_argument(
        "--check_determinism",
        action="store_true",
        help="Each worker also runs every batch through a second, separately loaded pair of "
        "extractors and records hub_rerun_max_abs and keras_rerun_max_abs (doubles the cost).",
    )
    processing.add_argument(
        "--device",
        type=device,
        default="auto",
        help=f"{DEVICE_CHOICES_HELP}. auto takes a GPU when TensorFlow sees one and spreads "
        "worker processes over the GPUs (default: %(default)s).",
    )
    return parser


def parse_job_args(argv):
    """Splits argv into the job's flags (argparse.Namespace) and Beam's flags (list)."""
    parser = build_parser()
    job, beam_args = parser.parse_known_args(argv)
    check_model_flags(parser, job)
    return job, beam_args
