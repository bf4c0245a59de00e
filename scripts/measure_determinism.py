"""Measures how far the features of the same images move with batch size and with the
number of TensorFlow threads, on the fixture pair. Each setting runs in its own process,
because TensorFlow fixes its thread count when it starts.

    .venv/bin/python scripts/measure_determinism.py [--images DIR]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

BATCH_SIZES = (1, 8, 32)
THREAD_COUNTS = (1, 2)


def extract(images_dir, batch_size, threads, output):
    """Runs both fixture extractors over every image of images_dir in one process."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    from transforms.extract import pad_batch, run_extractors
    from transforms.fixture import ensure_fixture_pair
    from transforms.image_decode import decode_image
    from transforms.models import HubExtractor, KerasExtractor

    pair = ensure_fixture_pair()
    hub_extractor, keras_extractor = HubExtractor(pair.hub_model), KerasExtractor(pair.keras_weights)
    names = sorted(name for name in os.listdir(images_dir) if not name.endswith(".md"))
    pixels = np.stack(
        [decode_image(open(os.path.join(images_dir, name), "rb").read()).pixels for name in names]
    )
    hub, keras = [], []
    for start in range(0, len(pixels), batch_size):
        batch = pixels[start : start + batch_size]
        hub_features, keras_features = run_extractors(
            hub_extractor, keras_extractor, pad_batch(batch, batch_size), "/CPU:0"
        )
        hub.append(hub_features[: len(batch)])
        keras.append(keras_features[: len(batch)])
    np.savez(output, hub=np.concatenate(hub), keras=np.concatenate(keras))


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", default=os.path.join(REPO_ROOT, "samples", "photos"))
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        batch_size, threads, output = args.worker
        extract(args.images, int(batch_size), int(threads), output)
        return

    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for threads in THREAD_COUNTS:
            for batch_size in BATCH_SIZES:
                output = os.path.join(folder, f"b{batch_size}-t{threads}.npz")
                subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--images",
                        args.images,
                        "--worker",
                        str(batch_size),
                        str(threads),
                        output,
                    ],
                    check=True,
                    env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
                )
                results[(batch_size, threads)] = np.load(output)

    reference = results[(32, 2)]
    rows = []
    for (batch_size, threads), features in sorted(results.items()):
        row = {"batch_size": batch_size, "intra_op_threads": threads}
        for model in ("hub", "keras"):
            difference = np.abs(features[model] - reference[model])
            row[f"{model}_max_abs_diff"] = float(difference.max())
            row[f"{model}_bitwise_equal"] = bool(np.array_equal(features[model], reference[model]))
        rows.append(row)
    print("| batch size | threads | hub max abs diff | Keras max abs diff | bitwise equal |")
    print("|---|---|---|---|---|")
    for row in rows:
        equal = "yes" if row["hub_bitwise_equal"] and row["keras_bitwise_equal"] else "no"
        print(
            f"| {row['batch_size']} | {row['intra_op_threads']} | {row['hub_max_abs_diff']:.3g} "
            f"| {row['keras_max_abs_diff']:.3g} | {equal} |"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
