"""`inception-parity explain`: ranks Keras configurations (pooling, input range, resize filter) by how
closely they match the hub model on sample images, and finds the final pooling op in the hub graph."""

import argparse
import itertools
import json
import logging
import sys
from collections import deque
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems

from pipeline.options import add_model_flags, check_model_flags, configure_logging, positive_integer
from pipeline.preflight import resolve_spec
from transforms import columns, divergence, preprocess
from transforms.image_decode import DEFAULT_RESIZE_FILTER, RESIZE_FILTERS, ImageDecodeError, decode_image
from transforms.models import (
    IMAGE_SIGNATURE,
    KERAS_POOLINGS,
    TF1_SIGNATURES,
    HubExtractor,
    KerasExtractor,
    ModelLoadError,
)
from transforms.read import IMAGE_EXTENSIONS, check_local_input, list_image_paths, resolve_input_pattern

_LOGGER = logging.getLogger(__name__)

DEFAULT_SAMPLE = 32
DEFAULT_OTHER_RESIZE_FILTER = "bicubic"
DEFAULT_BATCH_SIZE = 8

# Keras input preprocessing by the value range it produces from uint8 pixels.
CORRECT_INPUT_RANGE = "[-1, 1]"
KERAS_INPUT_RANGES = {
    CORRECT_INPUT_RANGE: preprocess.keras_input,
    "[0, 1]": preprocess.keras_input_unit_range,
}

# Differences up to this relative L2 count as float32 round-off in the verdict column.
# NOTE: a judgment call, about 100 float32 epsilons; not measured on the ImageNet models.
ROUND_OFF_RELATIVE_L2 = 1e-5

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_MODEL_LOAD = 3


@dataclass(frozen=True)
class KerasConfiguration:
    """One way to run Keras InceptionV3: pooling "avg"|"max", an input range key, a resize filter."""

    pooling: str
    input_range: str
    resize_filter: str

    @property
    def is_run_default(self):
        """Whether `inception-parity run` uses this configuration without pooling or filter flags."""
        return (self.pooling, self.input_range, self.resize_filter) == (
            "avg",
            CORRECT_INPUT_RANGE,
            DEFAULT_RESIZE_FILTER,
        )


def keras_configurations(other_resize_filter):
    """Lists every pooling × input range × {default filter, other_resize_filter} combination."""
    filters = (DEFAULT_RESIZE_FILTER, other_resize_filter)
    return [
        KerasConfiguration(pooling, input_range, resize_filter)
        for pooling, input_range, resize_filter in itertools.product(
            KERAS_POOLINGS, KERAS_INPUT_RANGES, filters
        )
    ]


def sample_image_paths(input_path, sample):
    """Picks up to sample image paths from --input, spread evenly over the sorted list of matches.

    Files are matched as `inception-parity run` matches them (transforms/read.py), so
    hidden files and non-image extensions are left out.

    Raises:
      FileNotFoundError: the input does not exist or contains no image files.
    """
    check_local_input(input_path)
    pattern, _ = resolve_input_pattern(input_path)
    images = list_image_paths(input_path)
    if not images:
        raise FileNotFoundError(
            f"--input {input_path!r} contains no image files (pattern {pattern!r}); pass a folder "
            f"or glob with files ending in one of {', '.join(sorted(IMAGE_EXTENSIONS))}"
        )
    if len(images) <= sample:
        return images
    # Spacing of at least 1 between the evenly spaced positions keeps the rounded indices distinct.
    indices = np.linspace(0, len(images) - 1, sample).round().astype(int)
    return [images[index] for index in indices]


def decode_sample(paths, resize_filters):
    """Decodes every path once per resize filter.

    Returns:
      (decoded_paths, pixels_by_filter, failures): pixels_by_filter maps each filter to
      uint8 [N, 299, 299, 3] RGB in [0, 255], in the order of decoded_paths. failures
      lists {"path", "error"} for files that could not be read or decoded.
    """
    decoded_paths, failures = [], []
    pixels = {resize_filter: [] for resize_filter in resize_filters}
    for path in paths:
        try:
            with FileSystems.open(path) as handle:
                data = handle.read()
            images = {name: decode_image(data, name).pixels for name in resize_filters}
        except (OSError, ImageDecodeError) as err:
            _LOGGER.warning("Leaving %s out of the sample: %s", path, err)
            failures.append({"path": path, "error": str(err)})
            continue
        decoded_paths.append(path)
        for name, image in images.items():
            pixels[name].append(image)
    pixels_by_filter = {name: np.stack(images) for name, images in pixels.items() if images}
    return decoded_paths, pixels_by_filter, failures


def extract_features(extractor, images, batch_size):
    """Runs float32 images [N, 299, 299, 3] through an extractor in batches; returns float32 [N, 2048]."""
    batches = [extractor(images[start : start + batch_size]) for start in range(0, len(images), batch_size)]
    return np.concatenate(batches, axis=0)


def rank_configurations(hub_features, keras_extractors, pixels_by_filter, configurations, batch_size):
    """Measures every Keras configuration against the hub features and sorts them, best first.

    Args:
      hub_features: float32 [N, 2048], the hub model on the default filter's pixels.
      keras_extractors: dict pooling → KerasExtractor.
      pixels_by_filter: dict resize filter → uint8 [N, 299, 299, 3].

    Returns:
      list of dicts, one per configuration, with rank, pooling, input_range, resize_filter,
      run_default, median/worst cosine_similarity, max_abs_diff and relative_l2, and
      round_off (worst relative_l2 <= ROUND_OFF_RELATIVE_L2). Sorted by median
      relative_l2, then worst max_abs_diff, then worst relative_l2.
    """
    rows = []
    for configuration in configurations:
        preprocess_fn = KERAS_INPUT_RANGES[configuration.input_range]
        images = preprocess_fn(pixels_by_filter[configuration.resize_filter])
        keras_features = extract_features(keras_extractors[configuration.pooling], images, batch_size)
        rows.append(_configuration_row(configuration, hub_features, keras_features))
        _LOGGER.info("Measured %s", configuration)

    rows.sort(key=_ranking_key)
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


def _configuration_row(configuration, hub_features, keras_features):
    cosine = divergence.cosine_similarity(hub_features, keras_features)
    max_abs = divergence.max_abs_diff(hub_features, keras_features)
    relative = divergence.relative_l2(hub_features, keras_features)
    return {
        "pooling": configuration.pooling,
        "input_range": configuration.input_range,
        "resize_filter": configuration.resize_filter,
        "run_default": configuration.is_run_default,
        "cosine_similarity_median": float(np.median(cosine)),
        "cosine_similarity_worst": float(np.min(cosine)),
        "max_abs_diff_median": float(np.median(max_abs)),
        "max_abs_diff_worst": float(np.max(max_abs)),
        "relative_l2_median": float(np.median(relative)),
        "relative_l2_worst": float(np.max(relative)),
        "round_off": bool(np.max(relative) <= ROUND_OFF_RELATIVE_L2),
    }


def _ranking_key(row):
    keys = (row["relative_l2_median"], row["max_abs_diff_worst"], row["relative_l2_worst"])
    # NaN sorts last: it means the features themselves are broken.
    return tuple(np.inf if np.isnan(value) else value for value in keys)


def explain(
    input_path,
    hub_extractor,
    keras_extractors,
    sample=DEFAULT_SAMPLE,
    other_resize_filter=DEFAULT_OTHER_RESIZE_FILTER,
    batch_size=DEFAULT_BATCH_SIZE,
):
    """Ranks the Keras configurations on a sample of --input and reads the hub graph's pooling.

    Args:
      hub_extractor: HubExtractor, run once on the default filter's pixels.
      keras_extractors: dict pooling ("avg", "max") → KerasExtractor.

    Returns:
      JSON-ready dict with sample (input, paths, failures), hub_resize_filter, ranking
      (see rank_configurations) and hub_pooling (see find_final_pooling).

    Raises:
      FileNotFoundError: no image of the sample could be read and decoded.
    """
    if other_resize_filter == DEFAULT_RESIZE_FILTER or other_resize_filter not in RESIZE_FILTERS:
        others = sorted(set(RESIZE_FILTERS) - {DEFAULT_RESIZE_FILTER})
        raise ValueError(f"other_resize_filter must be one of {others}, received {other_resize_filter!r}")

    # Sample, decoded once per resize filter.
    paths = sample_image_paths(input_path, sample)
    filters = (DEFAULT_RESIZE_FILTER, other_resize_filter)
    decoded_paths, pixels_by_filter, failures = decode_sample(paths, filters)
    if not decoded_paths:
        raise FileNotFoundError(
            f"None of the {len(paths)} sampled files under {input_path!r} could be decoded (see the "
            "warnings above); pass an --input with readable images"
        )

    # The hub reference, then every Keras configuration against it.
    hub_images = preprocess.hub_input(pixels_by_filter[DEFAULT_RESIZE_FILTER])
    hub_features = extract_features(hub_extractor, hub_images, batch_size)
    configurations = keras_configurations(other_resize_filter)
    ranking = rank_configurations(
        hub_features, keras_extractors, pixels_by_filter, configurations, batch_size
    )

    return {
        "sample": {"input": input_path, "paths": decoded_paths, "failures": failures},
        "hub_resize_filter": DEFAULT_RESIZE_FILTER,
        "ranking": ranking,
        "hub_pooling": find_final_pooling(hub_extractor),
    }


# Ops that pool a feature map: global reductions and windowed pools.
REDUCTION_POOLING_OPS = {"Mean": "average", "Max": "max"}
WINDOW_POOLING_OPS = {"AvgPool": "average", "MaxPool": "max"}
_CALL_OPS = ("StatefulPartitionedCall", "PartitionedCall")
# Ops that only forward a tensor; they are left out of the ops listed after the pooling.
_FORWARDING_OPS = ("Identity", "IdentityN", *_CALL_OPS)


class _Frame:
    """The nodes of one graph being walked: the top-level graph, or a library function
    entered through a call node of its parent frame."""

    def __init__(self, nodes, function_def=None, parent=None, call_node=None):
        self.nodes = nodes
        self.function_def = function_def
        self.parent = parent
        self.call_node = call_node
        self.args = [arg.name for arg in function_def.signature.input_arg] if function_def else []
        self._children = {}

    @property
    def function_name(self):
        return self.function_def.signature.name if self.function_def else None

    def child(self, call_node, function_def):
        """Returns the frame of function_def called by call_node, the same object on every visit."""
        key = (call_node, function_def.signature.name)
        if key not in self._children:
            nodes = {node.name: node for node in function_def.node_def}
            self._children[key] = _Frame(nodes, function_def, self, call_node)
        return self._children[key]


def find_final_pooling(hub_extractor):
    """Finds the pooling op nearest to the hub model's feature output by walking its graph backwards.

    The walk starts at the 2048-wide output of the loaded object's __call__ (TF2) or of
    its feature-vector signature (TF1 Hub format). It passes through every op and into
    the library functions that call ops run, breadth first, and stops at the first Mean,
    Max, AvgPool or MaxPool op.

    Returns:
      JSON-ready dict. op is the op type, None when no pooling op is found. kind is
      "average" or "max". Reductions have axes (int list, negative axes resolved when the
      rank is known) and keep_dims; windowed pools have ksize and strides. node and
      function (None at top level) locate it, input_shape is known at top level only,
      ops_after lists the ops between it and the output, and description is one sentence.
    """
    concrete = _hub_concrete_function(hub_extractor)
    output = _feature_output(concrete)
    graph_def = concrete.graph.as_graph_def()
    library = {function.signature.name: function for function in graph_def.library.function}
    top = _Frame({node.name: node for node in graph_def.node})

    found = _walk_to_pooling(top, output.op.name, output.value_index, library)
    if found is None:
        pooling = {"op": None, "output": output.name}
    else:
        frame, node, ops_after = found
        pooling = _describe_pooling_node(concrete.graph, frame, node)
        pooling["ops_after"] = ops_after
    pooling["description"] = describe_pooling(pooling)
    return pooling


def _hub_concrete_function(hub_extractor):
    """Returns the concrete function the extractor runs: __call__ (TF2) or a TF1 signature."""
    module = hub_extractor.module
    signatures = getattr(module, "signatures", {})
    if hub_extractor.is_tf1_format or not callable(module):
        for name in TF1_SIGNATURES:
            if name in signatures:
                return signatures[name]
        raise ModelLoadError(
            f"The hub model {hub_extractor.handle!r} has none of the signatures {TF1_SIGNATURES}; "
            f"found {sorted(signatures)}. Pass an image feature-vector model with --hub_model."
        )
    # A saved trace is read directly; tracing a new one would wrap it in another call.
    for trace in getattr(module.__call__, "concrete_functions", []):
        if _takes_images(trace):
            return trace
    try:
        return module.__call__.get_concrete_function(IMAGE_SIGNATURE)
    except (ValueError, TypeError) as err:
        raise ModelLoadError(
            f"The hub model {hub_extractor.handle!r} has no __call__ trace for float32 images "
            f"[N, 299, 299, 3] to read the graph of ({err})"
        ) from err


def _takes_images(trace):
    """Checks that a trace's first input accepts float32 [N, 299, 299, 3] and no argument is True.

    Exports that trace __call__ once per training=True/False are read in inference mode.
    """
    inputs = tf.nest.flatten(trace.structured_input_signature)
    specs = [value for value in inputs if isinstance(value, tf.TensorSpec)]
    if not specs or not specs[0].is_compatible_with(IMAGE_SIGNATURE):
        return False
    return not any(value is True for value in inputs)


def _feature_output(concrete):
    """Returns the graph tensor of the [N, 2048] features among concrete.outputs.

    A signature's output named "default" wins, then the first output 2048 wide. Restored
    functions describe their outputs as TensorSpecs, so the flattened structured outputs
    only pick the position in concrete.outputs, which lists the graph tensors in that order.
    """
    structured = concrete.structured_outputs
    flat = tf.nest.flatten(structured, expand_composites=True)
    if isinstance(structured, dict) and "default" in structured:
        # tf.nest flattens a dict in sorted key order.
        return concrete.outputs[sorted(structured).index("default")]
    for position, output in enumerate(flat):
        if output.shape.rank == 2 and output.shape[-1] == columns.FEATURE_DIM:
            return concrete.outputs[position]
    return concrete.outputs[0]


def _walk_to_pooling(top, output_node, output_index, library):
    """Walks breadth first from (output_node, output_index) of top against the data flow.

    A reference to a tensor is (frame, node or argument name, output argument name or
    None, index).

    Returns:
      (frame, pooling NodeDef, op types between it and the output), or None.
    """
    start = (top, output_node, None, output_index)
    previous = {_ref_key(start): None}
    queue = deque([start])
    while queue:
        ref = queue.popleft()
        frame, name = ref[0], ref[1]
        node = frame.nodes.get(name)
        if node is not None and (node.op in REDUCTION_POOLING_OPS or node.op in WINDOW_POOLING_OPS):
            return frame, node, _ops_between(ref, previous, library)
        for upstream in _upstream_refs(ref, library):
            if _ref_key(upstream) not in previous:
                previous[_ref_key(upstream)] = ref
                queue.append(upstream)
    return None


def _ref_key(ref):
    frame, name, output_arg, index = ref
    return id(frame), name, output_arg, index


def _ops_between(found, previous, library):
    """Lists the op types from the node after found up to the output, skipping forwarding ops."""
    ops = []
    ref = previous[_ref_key(found)]
    while ref is not None:
        node = ref[0].nodes.get(ref[1])
        if node is not None and node.op not in _FORWARDING_OPS and node.op not in library:
            ops.append(node.op)
        ref = previous[_ref_key(ref)]
    return ops


def _upstream_refs(ref, library):
    """Returns the tensors that produce ref: a node's data inputs, a callee's return value, or
    the caller's argument for a function argument."""
    frame, name, output_arg, index = ref
    node = frame.nodes.get(name)

    # A function argument: continue at the matching data input of the call node.
    if node is None:
        if frame.parent is None or name not in frame.args:
            return []
        call = frame.parent.nodes[frame.call_node]
        return [_parse_ref(frame.parent, _data_inputs(call)[frame.args.index(name)])]

    # A call: continue at the callee's return value for this output.
    callee = _callee(node, library)
    if callee is not None:
        output_names = [arg.name for arg in callee.signature.output_arg]
        # Call ops list their outputs as "output:i"; a direct call names the output argument.
        position = (
            output_names.index(output_arg)
            if node.op not in _CALL_OPS and output_arg in output_names
            else index
        )
        if position >= len(output_names):
            return []
        child = frame.child(node.name, callee)
        return [_parse_ref(child, callee.ret[output_names[position]])]

    if node.op == "IdentityN":
        return [_parse_ref(frame, _data_inputs(node)[index])]
    return [_parse_ref(frame, text) for text in _data_inputs(node)]


def _callee(node, library):
    if node.op in _CALL_OPS:
        return library.get(node.attr["f"].func.name)
    # Inside a FunctionDef a node may call a library function by using its name as the op.
    return library.get(node.op)


def _data_inputs(node):
    return [text for text in node.input if not text.startswith("^")]


def _parse_ref(frame, text):
    """Turns an input string into a tensor reference (frame, name, output argument name, index).

    GraphDef inputs read "node" or "node:index"; FunctionDef inputs read "argument" or
    "node:output_arg:index".
    """
    parts = text.split(":")
    if len(parts) == 1:
        return frame, parts[0], None, 0
    if len(parts) == 2:
        return frame, parts[0], None, int(parts[1])
    return frame, parts[0], parts[1], int(parts[2])


def _constant_value(frame, text):
    """Follows Identity ops and function arguments from an input string to a Const node.

    Returns:
      numpy array of the constant, or None when the value is computed at run time.
    """
    ref = _parse_ref(frame, text)
    for _ in range(_MAX_CONSTANT_HOPS):
        frame, name = ref[0], ref[1]
        node = frame.nodes.get(name)
        if node is not None and node.op == "Const":
            return tf.make_ndarray(node.attr["value"].tensor)
        if node is not None and node.op != "Identity":
            return None
        upstream = _upstream_refs(ref, {})
        if not upstream:
            return None
        ref = upstream[0]
    return None


# Identity and argument hops followed from a reduction op to its axes constant.
_MAX_CONSTANT_HOPS = 32


def _describe_pooling_node(top_graph, frame, node):
    """Collects the facts about one pooling NodeDef; see find_final_pooling for the keys."""
    input_shape = None
    if frame.function_def is None:
        shape = top_graph.get_operation_by_name(node.name).inputs[0].shape
        input_shape = shape.as_list() if shape.rank is not None else None

    pooling = {
        "op": node.op,
        "node": node.name,
        "function": frame.function_name,
        "input_shape": input_shape,
    }
    if node.op in WINDOW_POOLING_OPS:
        pooling["kind"] = WINDOW_POOLING_OPS[node.op]
        pooling["ksize"] = list(node.attr["ksize"].list.i)
        pooling["strides"] = list(node.attr["strides"].list.i)
        return pooling

    pooling["kind"] = REDUCTION_POOLING_OPS[node.op]
    pooling["keep_dims"] = bool(node.attr["keep_dims"].b)
    axes = _constant_value(frame, _data_inputs(node)[1])
    pooling["axes"] = None if axes is None else _resolve_axes(axes, input_shape)
    return pooling


def _resolve_axes(axes, input_shape):
    """Returns the reduction axes as a sorted int list, negative ones resolved when the rank is known."""
    axes = [int(axis) for axis in np.atleast_1d(axes)]
    if input_shape is not None:
        rank = len(input_shape)
        axes = [axis + rank if axis < 0 else axis for axis in axes]
    return sorted(axes)


def describe_pooling(pooling):
    """Formats one sentence about the hub graph's final pooling from a find_final_pooling dict."""
    if pooling["op"] is None:
        return (
            f"hub graph: no Mean, Max, AvgPool or MaxPool op found upstream of the output {pooling['output']}"
        )
    op, kind, axes = pooling["op"], pooling["kind"], pooling.get("axes")
    if op in WINDOW_POOLING_OPS:
        text = f"{op} with window {pooling['ksize']} and strides {pooling['strides']} ({kind} pooling)"
    elif axes is None:
        text = f"{op} over axes computed at run time ({kind} over unknown axes)"
    elif axes in ([1, 2], [-3, -2]):
        # Height and width of an NHWC map, the layout of the hub model's [N, 299, 299, 3] input.
        text = f"{op} over axes {axes} ({kind} pooling over the spatial grid)"
    else:
        text = f"{op} over axes {axes} ({kind} over axes other than the NHWC height and width)"

    if pooling["input_shape"] is not None:
        shape = ["?" if size is None else size for size in pooling["input_shape"]]
        text += f" of a [{', '.join(str(size) for size in shape)}] map"
    if pooling["function"] is not None:
        text += f", inside function {pooling['function']}"
    if pooling["ops_after"]:
        return f"hub graph's last pooling op is {text}, followed by {', '.join(pooling['ops_after'])}"
    return f"hub graph ends with {text}"


def format_ranking(result):
    """Formats the ranked table, the best-match lines and the hub graph's pooling for the console."""
    sample = result["sample"]
    ranking = result["ranking"]
    lines = [
        f"{len(sample['paths'])} sample images from {sample['input']} "
        f"({len(sample['failures'])} left out: not decodable); hub model on the "
        f"{result['hub_resize_filter']} filter and [0, 1] input as the reference.",
        "",
        _RANKING_HEADER,
    ]
    for row in ranking:
        lines.append(_ranking_line(row))
    lines += ["", "* = the configuration `inception-parity run` uses by default.", ""]
    lines += _best_match_lines(ranking)
    lines.append(result["hub_pooling"]["description"] + ".")
    return "\n".join(lines)


_RANKING_HEADER = (
    f"{'rank':>4}  {'pooling':<7}  {'input':<7}  {'filter':<8}  {'cosine p50':>12}  {'cosine worst':>12}  "
    f"{'max_abs p50':>11}  {'max_abs worst':>13}  {'rel_l2 p50':>10}  {'rel_l2 worst':>12}  verdict"
)


def _ranking_line(row):
    marker = "*" if row["run_default"] else " "
    verdict = "round-off" if row["round_off"] else "differs"
    return (
        f"{row['rank']:>3}{marker}  {row['pooling']:<7}  {row['input_range']:<7}  {row['resize_filter']:<8}  "
        f"{row['cosine_similarity_median']:>12.10f}  {row['cosine_similarity_worst']:>12.10f}  "
        f"{row['max_abs_diff_median']:>11.3e}  {row['max_abs_diff_worst']:>13.3e}  "
        f"{row['relative_l2_median']:>10.3e}  {row['relative_l2_worst']:>12.3e}  {verdict}"
    )


def _best_match_lines(ranking):
    best = ranking[0]
    lines = [f"Best match: {_configuration_text(best)}: {_gap_text(best)}."]
    if len(ranking) > 1:
        runner_up = ranking[1]
        lines.append(f"Next: {_configuration_text(runner_up)}: {_gap_text(runner_up)}.")
    max_rows = [row for row in ranking if row["pooling"] == "max"]
    if max_rows:
        best_max = max_rows[0]
        lines.append(f"Best with max pooling: rank {best_max['rank']}, {_gap_text(best_max)}.")
    return lines


def _configuration_text(row):
    return f"pooling={row['pooling']}, input {row['input_range']}, resize filter {row['resize_filter']}"


def _gap_text(row):
    return (
        f"median relative L2 {row['relative_l2_median']:.3e}, worst max abs diff "
        f"{row['max_abs_diff_worst']:.3e}, worst cosine {row['cosine_similarity_worst']:.10f}"
    )


def resolve_model_flags(parser, args):
    """Returns the ExtractorSpec of the model flags; exits through parser.error on a conflict."""
    check_model_flags(parser, args)
    job = argparse.Namespace(
        models=args.models,
        fixture_seed=args.fixture_seed,
        hub_model=args.hub_model,
        keras_weights=args.keras_weights,
        keras_pooling="avg",
    )
    spec, _ = resolve_spec(job)
    return spec


def build_parser(prog="inception-parity explain"):
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run the hub model once and Keras InceptionV3 under every combination of pooling "
        "(avg, max), input range ([-1, 1], [0, 1]) and resize filter on sample images, rank the "
        "combinations by how closely they match the hub features, and read the hub graph's final "
        "pooling op.",
    )
    parser.add_argument("--input", required=True, help="Folder (searched recursively), glob or single file.")
    parser.add_argument(
        "--sample",
        type=positive_integer,
        default=DEFAULT_SAMPLE,
        help="Number of images, spread evenly over the sorted matches (default: %(default)s).",
    )
    parser.add_argument(
        "--other_resize_filter",
        choices=sorted(set(RESIZE_FILTERS) - {DEFAULT_RESIZE_FILTER}),
        default=DEFAULT_OTHER_RESIZE_FILTER,
        help=f"Filter compared with the default {DEFAULT_RESIZE_FILTER} for the Keras input; the hub "
        f"reference always uses {DEFAULT_RESIZE_FILTER} (default: %(default)s).",
    )
    parser.add_argument(
        "--batch_size",
        type=positive_integer,
        default=DEFAULT_BATCH_SIZE,
        help="Images per forward pass (default: %(default)s).",
    )
    parser.add_argument("--json", default=None, help="Also write the full result as JSON to this file.")
    add_model_flags(parser)
    return parser


def load_models(spec):
    """Loads the hub extractor and one Keras extractor per pooling; returns (hub, {pooling: keras})."""
    hub_extractor = HubExtractor(spec.hub_model)
    keras_extractors = {pooling: KerasExtractor(spec.keras_weights, pooling) for pooling in KERAS_POOLINGS}
    return hub_extractor, keras_extractors


def write_json(path, result):
    with FileSystems.create(path) as handle:
        handle.write(json.dumps(result, indent=2).encode("utf-8"))


def main(argv=None):
    """Console entry of `inception-parity explain`; returns the exit code.

    Exit codes: 0 done, 2 invalid flags or no decodable image, 3 a model cannot be loaded.
    """
    configure_logging()
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    spec = resolve_model_flags(parser, args)
    try:
        # A missing --input fails here, before the models take seconds to load.
        check_local_input(args.input)
        hub_extractor, keras_extractors = load_models(spec)
        result = explain(
            args.input,
            hub_extractor,
            keras_extractors,
            args.sample,
            args.other_resize_filter,
            args.batch_size,
        )
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except ModelLoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_MODEL_LOAD

    result["models"] = {"hub": hub_extractor.identity(), "keras": keras_extractors["avg"].identity()}
    if args.json:
        write_json(args.json, result)
    print(format_ranking(result))
    return EXIT_OK
