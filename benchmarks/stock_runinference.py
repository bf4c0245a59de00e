"""The stock Beam route: one RunInference transform per model, with Beam's TF model handlers.

A user who knows Beam's ML API would chain two RunInference transforms with
TFModelHandlerNumpy (apache_beam.ml.inference.tensorflow_inference): the Keras model
loads as ModelType.SAVED_WEIGHTS with a create_model_fn, and the hub SavedModel as
ModelType.SAVED_MODEL, which the handler opens with tf.keras.models.load_model. Under
Keras 3 that call rejects SavedModel folders, so --probe_hub only reports whether the
hub model loads, and --models keras runs the Keras half alone.

Both handlers call the model eagerly on each batch (default_numpy_inference_fn), as
Beam 2.77 does.
"""

import argparse
import glob
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import apache_beam as beam  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference  # noqa: E402
from apache_beam.ml.inference.tensorflow_inference import ModelType, TFModelHandlerNumpy  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from PIL import Image  # noqa: E402

IMAGE_SIZE = 299
FEATURE_DIM = 2048


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hub_model", required=True, help="Hub SavedModel folder.")
    parser.add_argument("--keras_weights", help="Keras InceptionV3(include_top=False) weights file.")
    parser.add_argument(
        "--probe_hub", help="Write whether the stock handler loads the hub model to this JSON file."
    )
    parser.add_argument("--input", help="Folder of images.")
    parser.add_argument("--output", help="Prefix of the Parquet files to write.")
    parser.add_argument(
        "--models", choices=("both", "keras"), default="both", help="Which RunInference steps run."
    )
    parser.add_argument("--batch_size", type=int, default=32, help="Images per batch (default: 32).")
    return parser.parse_known_args(argv)


def build_keras_model():
    import keras

    return keras.applications.InceptionV3(include_top=False, weights=None, pooling="avg")


def hub_handler(hub_model, batch_size):
    handler = TFModelHandlerNumpy(hub_model, min_batch_size=batch_size, max_batch_size=batch_size)
    return KeyedModelHandler(handler)


def keras_handler(keras_weights, batch_size):
    handler = TFModelHandlerNumpy(
        keras_weights,
        model_type=ModelType.SAVED_WEIGHTS,
        create_model_fn=build_keras_model,
        min_batch_size=batch_size,
        max_batch_size=batch_size,
    )
    return KeyedModelHandler(handler)


def probe_hub(hub_model):
    """Returns {"loads": bool, "reason": str} for the stock handler and the hub SavedModel."""
    try:
        TFModelHandlerNumpy(hub_model).load_model()
    except Exception as err:  # noqa: BLE001 - the handler wraps every load failure in ValueError
        return {"loads": False, "reason": f"{type(err).__name__}: {leading_sentences(str(err))}"}
    return {"loads": True, "reason": ""}


def leading_sentences(text, count=3):
    """Returns the first count sentences of text, with its whitespace collapsed."""
    sentences = " ".join(text.split()).split(". ")
    return ". ".join(sentences[:count]).rstrip(".") + "."


def decode(path):
    """Returns (path, uint8 RGB [299, 299, 3])."""
    with Image.open(path) as image:
        return path, np.asarray(image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE)), dtype=np.uint8)


def to_unit_range(keyed):
    path, pixels = keyed
    return path, pixels.astype(np.float32) / 255.0


def to_keras_range(keyed):
    path, pixels = keyed
    return path, pixels.astype(np.float32) / 127.5 - 1.0


def hub_result_to_keras_input(keyed):
    """Carries the hub features in the key and rescales the hub input [0, 1] to [-1, 1]."""
    path, result = keyed
    return (path, np.asarray(result.inference)), result.example * 2.0 - 1.0


def to_row(keyed):
    key, result = keyed
    path, hub_features = key if isinstance(key, tuple) else (key, None)
    row = {"path": path, "keras_features": np.asarray(result.inference, dtype=np.float32).tolist()}
    if hub_features is not None:
        row["hub_features"] = hub_features.astype(np.float32).tolist()
    return row


def output_schema(models):
    vector = pa.list_(pa.float32(), FEATURE_DIM)
    fields = [("path", pa.string()), ("keras_features", vector)]
    if models == "both":
        fields.append(("hub_features", vector))
    return pa.schema(fields)


def run_pipeline(args, beam_args):
    paths = sorted(glob.glob(os.path.join(args.input, "*")))
    with beam.Pipeline(options=PipelineOptions(beam_args)) as pipeline:
        decoded = pipeline | "CreatePaths" >> beam.Create(paths) | "Reshuffle" >> beam.Reshuffle()
        decoded = decoded | "DecodeImages" >> beam.Map(decode)
        if args.models == "both":
            keras_in = (
                decoded
                | "ToHubRange" >> beam.Map(to_unit_range)
                | "RunHub" >> RunInference(hub_handler(args.hub_model, args.batch_size))
                | "ToKerasInput" >> beam.Map(hub_result_to_keras_input)
            )
        else:
            keras_in = decoded | "ToKerasRange" >> beam.Map(to_keras_range)
        rows = (
            keras_in
            | "RunKeras" >> RunInference(keras_handler(args.keras_weights, args.batch_size))
            | "ToRows" >> beam.Map(to_row)
        )
        rows | "WriteFeatures" >> beam.io.WriteToParquet(
            args.output, schema=output_schema(args.models), codec="zstd", file_name_suffix=".parquet"
        )


def main(argv=None):
    args, beam_args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.probe_hub:
        with open(args.probe_hub, "w", encoding="utf-8") as handle:
            json.dump(probe_hub(args.hub_model), handle)
        return 0
    run_pipeline(args, beam_args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
