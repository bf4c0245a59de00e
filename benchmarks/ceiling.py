"""Ceiling throughput: the project's two extractors on pre-decoded 299x299 batches.

Run by run_benchmark.py as a child process, one precision per process, because a Keras
dtype policy may be process-wide. Images are decoded and preprocessed with the
pipeline's own functions before the clock starts. Only the two forward passes per batch
are timed, and the first batch is left out because it traces both tf.functions.

Writes a JSON result and, on success, both models' features as an .npz file.
"""

import argparse
import inspect
import json
import os
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench_images import image_paths  # noqa: E402

from transforms.image_decode import decode_image  # noqa: E402
from transforms.models import HubExtractor, KerasExtractor  # noqa: E402
from transforms.preprocess import hub_input, keras_input  # noqa: E402

FLOAT32 = "float32"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, help="Folder of images written by bench_images.")
    parser.add_argument("--hub_model", required=True, help="Hub SavedModel folder.")
    parser.add_argument("--keras_weights", required=True, help="Keras InceptionV3 weights file.")
    parser.add_argument("--batch_size", type=int, required=True, help="Images per forward pass.")
    parser.add_argument("--precision", default=FLOAT32, help="float32 or bfloat16.")
    parser.add_argument("--json_out", required=True, help="File that receives the JSON result.")
    parser.add_argument("--features_out", required=True, help=".npz file that receives the features.")
    return parser.parse_args(argv)


def precision_unsupported_reason():
    """Returns why the extractors cannot take a precision argument, or None when both can."""
    missing = [
        cls.__name__
        for cls in (HubExtractor, KerasExtractor)
        if "precision" not in inspect.signature(cls).parameters
    ]
    if missing:
        return f"{' and '.join(missing)} take no precision argument (transforms/models.py)"
    return None


def load_extractors(args):
    """Loads both extractors; passes precision only when it is not float32 or is supported."""
    extra = {}
    if args.precision != FLOAT32 or precision_unsupported_reason() is None:
        extra = {"precision": args.precision}
    return HubExtractor(args.hub_model, **extra), KerasExtractor(args.keras_weights, "avg", **extra)


def decode_batches(folder, batch_size):
    """Decodes every image as the pipeline does; returns a list of (hub input, Keras input)."""
    pixels = np.stack([_decode_file(path) for path in image_paths(folder)])
    return [
        (hub_input(pixels[start : start + batch_size]), keras_input(pixels[start : start + batch_size]))
        for start in range(0, len(pixels), batch_size)
    ]


def _decode_file(path):
    with open(path, "rb") as handle:
        return decode_image(handle.read()).pixels


def time_forward_passes(hub, keras, batches):
    """Runs every batch through both models; returns timings and float32 features.

    The first batch is run but not timed: it traces both tf.functions.
    """
    hub_features, keras_features = [], []
    hub_secs = keras_secs = cpu_secs = 0.0
    timed_images = 0
    first_batch_secs = None
    for index, (hub_batch, keras_batch) in enumerate(batches):
        cpu_started = time.process_time()
        started = time.perf_counter()
        hub_features.append(np.asarray(hub(hub_batch), dtype=np.float32))
        between = time.perf_counter()
        keras_features.append(np.asarray(keras(keras_batch), dtype=np.float32))
        finished = time.perf_counter()
        cpu_finished = time.process_time()
        if index == 0:
            first_batch_secs = finished - started
            continue
        hub_secs += between - started
        keras_secs += finished - between
        cpu_secs += cpu_finished - cpu_started
        timed_images += len(hub_batch)

    timings = {
        "timed_images": timed_images,
        "first_batch_secs": first_batch_secs,
        "hub_secs": hub_secs,
        "keras_secs": keras_secs,
        "images_per_sec": _rate(timed_images, hub_secs + keras_secs),
        "hub_images_per_sec": _rate(timed_images, hub_secs),
        "keras_images_per_sec": _rate(timed_images, keras_secs),
        # Process CPU time, summed over all of TensorFlow's threads.
        "cpu_secs_per_image": cpu_secs / timed_images,
    }
    return timings, np.concatenate(hub_features), np.concatenate(keras_features)


def _rate(images, secs):
    return images / secs if secs > 0 else None


def measure(args):
    """Returns the JSON-ready result of one precision; saves features to args.features_out."""
    reason = precision_unsupported_reason()
    if args.precision != FLOAT32 and reason is not None:
        return {"precision": args.precision, "available": False, "reason": reason}

    batches = decode_batches(args.images, args.batch_size)
    if len(batches) < 2:
        raise ValueError(
            f"need more than one batch of {args.batch_size} images to time, found {len(batches)}"
        )

    started = time.perf_counter()
    hub, keras = load_extractors(args)
    load_secs = time.perf_counter() - started
    timings, hub_features, keras_features = time_forward_passes(hub, keras, batches)
    np.savez(args.features_out, hub=hub_features, keras=keras_features)
    return {"precision": args.precision, "available": True, "load_secs": load_secs, **timings}


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    result = measure(args)
    with open(args.json_out, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
