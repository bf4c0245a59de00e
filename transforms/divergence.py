"""Divergence between the hub and the Keras feature vectors of the same image.

Every function takes two float arrays of equal shape [..., D], reduces over the last axis
and computes in float64, so a batch [N, D] gives N values and a single vector gives a
scalar. Cases that would divide by zero are defined below instead of returning NaN.
"""

import numpy as np


def _as_float64(hub, keras):
    hub = np.asarray(hub, dtype=np.float64)
    keras = np.asarray(keras, dtype=np.float64)
    if hub.shape != keras.shape:
        raise ValueError(
            f"hub and keras features must have the same shape, received {hub.shape} and {keras.shape}"
        )
    return hub, keras


def hub_norm(hub, keras):
    """Euclidean norm of the hub vector."""
    hub, _ = _as_float64(hub, keras)
    return np.linalg.norm(hub, axis=-1)


def keras_norm(hub, keras):
    """Euclidean norm of the Keras vector."""
    _, keras = _as_float64(hub, keras)
    return np.linalg.norm(keras, axis=-1)


def hub_sum(hub, keras):
    """Sum of the hub vector's values."""
    hub, _ = _as_float64(hub, keras)
    return hub.sum(axis=-1)


def keras_sum(hub, keras):
    """Sum of the Keras vector's values."""
    _, keras = _as_float64(hub, keras)
    return keras.sum(axis=-1)


def cosine_similarity(hub, keras):
    """Cosine of the angle between the vectors, in [-1, 1].

    Equal vectors give exactly 1.0, two zero vectors included; a zero vector against a
    non-zero one has no direction in common with it (0.0).
    """
    hub, keras = _as_float64(hub, keras)
    norms = np.linalg.norm(hub, axis=-1) * np.linalg.norm(keras, axis=-1)
    dot = (hub * keras).sum(axis=-1)
    cosine = np.divide(dot, norms, out=np.zeros_like(dot), where=norms > 0)
    # Dividing by the product of the norms rounds, so equal vectors could score
    # 0.9999999999999998; they are set to exactly 1.0, and this covers two zero vectors.
    equal = (hub == keras).all(axis=-1)
    return np.where(equal, 1.0, np.clip(cosine, -1.0, 1.0))


def l2_distance(hub, keras):
    """Euclidean distance ‖hub − keras‖."""
    hub, keras = _as_float64(hub, keras)
    return np.linalg.norm(hub - keras, axis=-1)


def relative_l2(hub, keras):
    """‖hub − keras‖ / ‖hub‖.

    When the hub vector is zero the ratio is 0.0 if the Keras vector is zero too and
    +inf otherwise: any difference is infinitely large relative to nothing.
    """
    hub, keras = _as_float64(hub, keras)
    distance = np.linalg.norm(hub - keras, axis=-1)
    norm = np.linalg.norm(hub, axis=-1)
    zero_norm_value = np.where(distance > 0, np.inf, 0.0)
    ratio = np.divide(distance, norm, out=np.zeros_like(distance), where=norm > 0)
    return np.where(norm > 0, ratio, zero_norm_value)


def max_abs_diff(hub, keras):
    """Largest absolute element-wise difference."""
    hub, keras = _as_float64(hub, keras)
    return np.abs(hub - keras).max(axis=-1)


def mean_abs_diff(hub, keras):
    """Mean absolute element-wise difference."""
    hub, keras = _as_float64(hub, keras)
    return np.abs(hub - keras).mean(axis=-1)


def pearson(hub, keras):
    """Pearson correlation of the two vectors' values, in [-1, 1].

    The coefficient is undefined when a vector is constant, so these cases are defined:
    two equal constant vectors give 1.0, two different constant vectors give 0.0, and
    a constant vector against a varying one gives 0.0.
    """
    hub, keras = _as_float64(hub, keras)
    hub_centered = hub - hub.mean(axis=-1, keepdims=True)
    keras_centered = keras - keras.mean(axis=-1, keepdims=True)
    spread = np.linalg.norm(hub_centered, axis=-1) * np.linalg.norm(keras_centered, axis=-1)
    covariance = (hub_centered * keras_centered).sum(axis=-1)
    correlation = np.divide(covariance, spread, out=np.zeros_like(covariance), where=spread > 0)

    both_constant = ~hub_centered.any(axis=-1) & ~keras_centered.any(axis=-1)
    equal = (hub == keras).all(axis=-1)
    constant_value = np.where(equal, 1.0, 0.0)
    return np.where(both_constant, constant_value, np.clip(correlation, -1.0, 1.0))


# Column name → function, in the order of columns.DIVERGENCE_COLUMNS (a test checks it).
DIVERGENCE_FUNCTIONS = {
    "cosine_similarity": cosine_similarity,
    "l2_distance": l2_distance,
    "relative_l2": relative_l2,
    "max_abs_diff": max_abs_diff,
    "mean_abs_diff": mean_abs_diff,
    "pearson": pearson,
    "hub_sum": hub_sum,
    "keras_sum": keras_sum,
    "hub_norm": hub_norm,
    "keras_norm": keras_norm,
}


def divergence_columns(hub, keras):
    """Computes every divergence column for a batch.

    Args:
      hub, keras: float arrays [N, D].

    Returns:
      dict column name → float64 array [N].
    """
    return {name: np.atleast_1d(fn(hub, keras)) for name, fn in DIVERGENCE_FUNCTIONS.items()}
