"""`inception-parity compare-weights`: pairs the hub SavedModel's variables with Keras InceptionV3's
weights and reports, tensor by tensor, which are identical and how far the others differ.

Exit codes: 0 every tensor identical, 1 some differ or are unmatched, 2 invalid flags,
3 a model cannot be loaded.
"""

import argparse
import hashlib
import logging
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass

import numpy as np

from pipeline.explain import resolve_model_flags, write_json
from pipeline.options import add_model_flags, configure_logging
from transforms.models import HubExtractor, KerasExtractor, ModelLoadError

_LOGGER = logging.getLogger(__name__)

EXIT_IDENTICAL = 0
EXIT_DIFFERENT = 1
EXIT_USAGE = 2
EXIT_MODEL_LOAD = 3

# Values of WeightPair.matched_by: a bitwise-equal hub tensor, or the next unused one of that shape.
MATCHED_BY_VALUE = "value"
MATCHED_BY_SHAPE_ORDER = "shape order"


@dataclass(frozen=True)
class NamedTensor:
    """One weight tensor: its position in its model's weight list, its name and its value.

    name: the Keras variable path ("conv2d_3/kernel") or the hub variable name.
    layer: the Keras layer's name, class and index in model.layers ("conv2d_3 (Conv2D, #11)"),
      None for hub variables. Keras numbers unnamed layers per process (conv2d, conv2d_1,
      ...). A second model built in the same process therefore gets higher numbers, but
      the same layer index.
    value: numpy array of the variable's shape and dtype.
    """

    index: int
    name: str
    layer: str | None
    value: np.ndarray


@dataclass(frozen=True)
class WeightPair:
    """A Keras weight and the hub variable matched to it, with their difference.

    identical: same dtype, shape and bytes.
    max_abs_diff: max |keras - hub| computed in float64.
    relative_diff: max_abs_diff / max |keras|; 0.0 for two zero tensors, inf when only
    the Keras tensor is all zeros.
    """

    keras_index: int
    keras_path: str
    keras_layer: str
    hub_index: int
    hub_name: str
    shape: tuple
    matched_by: str
    identical: bool
    max_abs_diff: float
    relative_diff: float


def keras_tensors(model):
    """Lists a Keras model's weights in layer order as NamedTensors, naming each one's layer."""
    layer_of = {}
    for layer_index, layer in enumerate(model.layers):
        for weight in layer.weights:
            layer_of[id(weight)] = f"{layer.name} ({type(layer).__name__}, #{layer_index})"
    return [
        NamedTensor(index, weight.path, layer_of.get(id(weight), "?"), np.asarray(weight.numpy()))
        for index, weight in enumerate(model.weights)
    ]


def hub_tensors(variables):
    """Lists tf.Variables (a loaded SavedModel's .variables) as NamedTensors, in the given order."""
    return [
        NamedTensor(index, variable.name, None, np.asarray(variable.numpy()))
        for index, variable in enumerate(variables)
    ]


def compare_weights(keras, hub):
    """Pairs Keras weights with hub variables of the same shape and measures each pair.

    Two passes, so that a different variable order in the hub model does not hide
    identical tensors. First each Keras weight, in layer order, takes the first unused
    hub variable of the same shape whose values are equal. Then each Keras weight left
    takes the next unused hub variable of its shape, in hub order.

    Args:
      keras, hub: lists of NamedTensor.

    Returns:
      dict with pairs (list of WeightPair, in Keras order), unmatched_keras and
      unmatched_hub (lists of NamedTensor), and identical and different counts.
    """
    # Pass 1: bitwise-equal values, found through a digest of dtype, shape and bytes.
    hub_by_content = defaultdict(list)
    for tensor in hub:
        hub_by_content[_content_key(tensor.value)].append(tensor)
    unused = {tensor.index for tensor in hub}
    by_keras_index = {}
    for tensor in keras:
        match = _first_unused(hub_by_content[_content_key(tensor.value)], unused)
        if match is not None:
            unused.discard(match.index)
            by_keras_index[tensor.index] = _pair(tensor, match, MATCHED_BY_VALUE)

    # Pass 2: each Keras weight left takes the next unused hub variable of its shape.
    hub_by_shape = defaultdict(list)
    for tensor in hub:
        hub_by_shape[tuple(tensor.value.shape)].append(tensor)
    unmatched_keras = []
    for tensor in keras:
        if tensor.index in by_keras_index:
            continue
        match = _first_unused(hub_by_shape[tuple(tensor.value.shape)], unused)
        if match is None:
            unmatched_keras.append(tensor)
            continue
        unused.discard(match.index)
        by_keras_index[tensor.index] = _pair(tensor, match, MATCHED_BY_SHAPE_ORDER)

    pairs = [by_keras_index[index] for index in sorted(by_keras_index)]
    identical = sum(pair.identical for pair in pairs)
    return {
        "pairs": pairs,
        "unmatched_keras": unmatched_keras,
        "unmatched_hub": [tensor for tensor in hub if tensor.index in unused],
        "identical": identical,
        "different": len(pairs) - identical,
    }


def _content_key(value):
    """Returns (dtype, shape, SHA-256 of the bytes): equal keys mean bitwise-identical tensors."""
    value = np.ascontiguousarray(value)
    return value.dtype.str, value.shape, hashlib.sha256(value.tobytes()).hexdigest()


def _first_unused(candidates, unused):
    for candidate in candidates:
        if candidate.index in unused:
            return candidate
    return None


def _pair(keras, hub, matched_by):
    keras_value = keras.value.astype(np.float64)
    difference = np.abs(keras_value - hub.value.astype(np.float64))
    max_abs = float(difference.max()) if difference.size else 0.0
    scale = float(np.abs(keras_value).max()) if keras_value.size else 0.0
    if scale > 0:
        relative = max_abs / scale
    else:
        relative = 0.0 if max_abs == 0 else float("inf")
    return WeightPair(
        keras_index=keras.index,
        keras_path=keras.name,
        keras_layer=keras.layer,
        hub_index=hub.index,
        hub_name=hub.name,
        shape=tuple(int(size) for size in keras.value.shape),
        matched_by=matched_by,
        identical=_content_key(keras.value) == _content_key(hub.value),
        max_abs_diff=max_abs,
        relative_diff=relative,
    )


def format_comparison(result, show_identical=False):
    """Formats the summary line, the table of differing (or all) pairs and the unmatched tensors."""
    pairs = result["pairs"]
    unmatched = len(result["unmatched_keras"]) + len(result["unmatched_hub"])
    lines = [
        f"{result['identical']} identical, {result['different']} differ, {unmatched} unmatched "
        f"({len(result['unmatched_keras'])} Keras, {len(result['unmatched_hub'])} hub)",
    ]
    listed_pairs = pairs if show_identical else [pair for pair in pairs if not pair.identical]
    if listed_pairs:
        lines += ["", _PAIR_HEADER]
        lines += [_pair_line(pair) for pair in listed_pairs]
    for side, tensors in (("Keras", result["unmatched_keras"]), ("hub", result["unmatched_hub"])):
        if tensors:
            lines += ["", f"Unmatched {side} tensors (no tensor of the same shape left on the other side):"]
            lines += [f"  #{tensor.index} {tensor.name} {list(tensor.value.shape)}" for tensor in tensors]
    return "\n".join(lines)


_PAIR_HEADER = (
    f"{'#':>4}  {'Keras weight':<40}  {'Keras layer':<48}  {'hub variable':<40}  {'shape':<18}  "
    f"{'status':<9}  {'max abs diff':>12}  {'relative':>10}  matched by"
)


def _pair_line(pair):
    status = "identical" if pair.identical else "differs"
    shape = "x".join(str(size) for size in pair.shape) or "scalar"
    return (
        f"{pair.keras_index:>4}  {pair.keras_path:<40}  {pair.keras_layer:<48}  {pair.hub_name:<40}  "
        f"{shape:<18}  {status:<9}  {pair.max_abs_diff:>12.4e}  {pair.relative_diff:>10.3e}  "
        f"{pair.matched_by}"
    )


def comparison_json(result):
    """Returns the comparison as a JSON-ready dict (tensor values left out)."""
    return {
        "identical": result["identical"],
        "different": result["different"],
        "pairs": [_json_safe(asdict(pair)) for pair in result["pairs"]],
        "unmatched_keras": [_tensor_json(tensor) for tensor in result["unmatched_keras"]],
        "unmatched_hub": [_tensor_json(tensor) for tensor in result["unmatched_hub"]],
    }


def _tensor_json(tensor):
    return {
        "index": tensor.index,
        "name": tensor.name,
        "layer": tensor.layer,
        "shape": list(tensor.value.shape),
    }


def _json_safe(row):
    """Writes inf and NaN floats as the strings "inf" and "nan", which strict JSON has no numbers for."""
    return {
        key: (str(value) if isinstance(value, float) and not np.isfinite(value) else value)
        for key, value in row.items()
    }


def build_parser(prog="inception-parity compare-weights"):
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Pair every variable of the hub SavedModel with a Keras InceptionV3 weight of the same "
        "shape and report which tensors are identical and how far the others differ. Exit code 0 when "
        "every tensor is identical, 1 when some differ or are unmatched.",
    )
    parser.add_argument(
        "--show_identical", action="store_true", help="List every pair, not only the differing ones."
    )
    parser.add_argument("--json", default=None, help="Also write every pair as JSON to this file.")
    add_model_flags(parser)
    return parser


def main(argv=None):
    """Console entry of `inception-parity compare-weights`; returns the exit code (module docstring)."""
    configure_logging()
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    spec = resolve_model_flags(parser, args)
    try:
        hub_extractor = HubExtractor(spec.hub_model)
        keras_extractor = KerasExtractor(spec.keras_weights, "avg")
    except ModelLoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_MODEL_LOAD

    hub = hub_tensors(hub_extractor.variables)
    if not hub:
        print(f"error: the hub model {spec.hub_model!r} exposes no .variables to compare", file=sys.stderr)
        return EXIT_MODEL_LOAD
    result = compare_weights(keras_tensors(keras_extractor.model), hub)
    _LOGGER.info("Compared %d Keras weights with %d hub variables", len(result["pairs"]), len(hub))

    if args.json:
        output = comparison_json(result)
        output["models"] = {"hub": hub_extractor.identity(), "keras": keras_extractor.identity()}
        write_json(args.json, output)
    print(f"Hub model: {spec.hub_model}\nKeras weights: {keras_extractor.weights_path}")
    print(format_comparison(result, args.show_identical))
    unmatched = result["unmatched_keras"] or result["unmatched_hub"]
    return EXIT_DIFFERENT if result["different"] or unmatched else EXIT_IDENTICAL
