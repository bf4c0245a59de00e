"""Column names and Arrow schemas of every table the pipeline writes, defined once."""

import pyarrow as pa

FEATURE_DIM = 2048

# Per-image identity columns of the features table.
PATH = "path"
SHA256 = "sha256"
WIDTH = "width"
HEIGHT = "height"
FORMAT = "format"
DEVICE = "device"

HUB_FEATURES = "hub_features"
KERAS_FEATURES = "keras_features"

# Divergence columns: one float64 each, computed in transforms/divergence.py.
DIVERGENCE_COLUMNS = (
    "cosine_similarity",
    "l2_distance",
    "relative_l2",
    "max_abs_diff",
    "mean_abs_diff",
    "pearson",
    "hub_sum",
    "keras_sum",
    "hub_norm",
    "keras_norm",
)

# Filled only with --check_determinism: per image, the max absolute difference between
# the features of the worker's extractors and of a second pair loaded separately.
HUB_RERUN_MAX_ABS = "hub_rerun_max_abs"
KERAS_RERUN_MAX_ABS = "keras_rerun_max_abs"

# Errors and skipped-files tables.
STAGE = "stage"
ERROR = "error"
REASON = "reason"

FEATURES_SCHEMA = pa.schema(
    [
        pa.field(PATH, pa.string(), nullable=False),
        pa.field(SHA256, pa.string(), nullable=False),
        pa.field(WIDTH, pa.int32(), nullable=False),
        pa.field(HEIGHT, pa.int32(), nullable=False),
        pa.field(FORMAT, pa.string()),
        pa.field(HUB_FEATURES, pa.list_(pa.float32(), FEATURE_DIM), nullable=False),
        pa.field(KERAS_FEATURES, pa.list_(pa.float32(), FEATURE_DIM), nullable=False),
        *(pa.field(name, pa.float64(), nullable=False) for name in DIVERGENCE_COLUMNS),
        pa.field(DEVICE, pa.string(), nullable=False),
        pa.field(HUB_RERUN_MAX_ABS, pa.float64()),
        pa.field(KERAS_RERUN_MAX_ABS, pa.float64()),
    ]
)

ERRORS_SCHEMA = pa.schema(
    [
        pa.field(PATH, pa.string(), nullable=False),
        pa.field(STAGE, pa.string(), nullable=False),
        pa.field(ERROR, pa.string(), nullable=False),
    ]
)

SKIPPED_SCHEMA = pa.schema(
    [
        pa.field(PATH, pa.string(), nullable=False),
        pa.field(REASON, pa.string(), nullable=False),
    ]
)
