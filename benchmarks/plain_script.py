"""The plain script a user would write instead of the pipeline: the baseline of the benchmark.

It decodes every image of a folder with Pillow: RGB, resized to 299x299 with Pillow's
default filter (bicubic). Each batch goes through the TF Hub SavedModel, loaded with
tensorflow_hub.load and called on float32 in [0, 1], and through Keras InceptionV3 with
weights from a file, called with model.predict on preprocess_input's [-1, 1]. The script
writes paths, both feature vectors and their cosine similarity to one zstd Parquet file
with pyarrow.

Keras is called with model.predict, as Keras' own application examples do; predict runs
the model in a traced function that it builds once and reuses.

usage: plain_script.py --input FOLDER --output FILE.parquet --hub_model DIR --keras_weights FILE
"""

import argparse
import glob
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_hub as hub  # noqa: E402
from PIL import Image  # noqa: E402

IMAGE_SIZE = 299


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Extract InceptionV3 features with TF Hub and Keras.")
    parser.add_argument("--input", required=True, help="Folder of JPEG and PNG images.")
    parser.add_argument("--output", required=True, help="Parquet file to write.")
    parser.add_argument("--hub_model", required=True, help="TF Hub SavedModel folder.")
    parser.add_argument(
        "--keras_weights", required=True, help="Keras InceptionV3(include_top=False) weights."
    )
    parser.add_argument("--batch_size", type=int, default=32, help="Images per batch (default: 32).")
    return parser.parse_args(argv)


def load_image(path):
    """Returns uint8 RGB [299, 299, 3]."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE)), dtype=np.uint8)


def load_models(hub_model, keras_weights):
    hub_module = hub.load(hub_model)
    keras_model = keras.applications.InceptionV3(include_top=False, weights=None, pooling="avg")
    keras_model.load_weights(keras_weights)
    return hub_module, keras_model


def extract(hub_module, keras_model, pixels):
    """Returns float32 hub and Keras features [N, 2048] of uint8 images [N, 299, 299, 3]."""
    images = pixels.astype(np.float32)
    hub_features = hub_module(tf.constant(images / 255.0)).numpy()
    keras_in = keras.applications.inception_v3.preprocess_input(images.copy())
    keras_features = keras_model.predict(keras_in, batch_size=len(pixels), verbose=0)
    return hub_features, keras_features


def cosine(a, b):
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def write_parquet(path, paths, hub_features, keras_features):
    vector = pa.list_(pa.float32(), hub_features.shape[1])
    table = pa.table(
        {
            "path": pa.array(paths),
            "hub_features": pa.FixedSizeListArray.from_arrays(pa.array(hub_features.ravel()), type=vector),
            "keras_features": pa.FixedSizeListArray.from_arrays(
                pa.array(keras_features.ravel()), type=vector
            ),
            "cosine_similarity": pa.array(cosine(hub_features, keras_features)),
        }
    )
    pq.write_table(table, path, compression="zstd")


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    paths = sorted(glob.glob(os.path.join(args.input, "*")))
    hub_module, keras_model = load_models(args.hub_model, args.keras_weights)

    hub_parts, keras_parts = [], []
    for start in range(0, len(paths), args.batch_size):
        pixels = np.stack([load_image(path) for path in paths[start : start + args.batch_size]])
        hub_features, keras_features = extract(hub_module, keras_model, pixels)
        hub_parts.append(hub_features)
        keras_parts.append(keras_features)

    write_parquet(args.output, paths, np.concatenate(hub_parts), np.concatenate(keras_parts))
    print(f"wrote {len(paths)} rows to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
