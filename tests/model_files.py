"""Small model files made by tests: a legacy TF1 Hub-format module with a known output."""

import numpy as np
import tensorflow as tf

from transforms.image_decode import IMAGE_SIZE

# The module's weights: features = mean over pixels of each channel, times this matrix.
TF1_WEIGHTS = (np.arange(3 * 2048, dtype=np.float32).reshape(3, 2048) % 7) / 7.0


def write_tf1_hub_module(path):
    """Writes a TF1 Hub-format module (empty tag set, 'default' signature, tfhub_module.pb)
    mapping images [N, 299, 299, 3] to [N, 2048] = channel means @ TF1_WEIGHTS."""
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, IMAGE_SIZE, IMAGE_SIZE, 3], name="images")
        weights = tf.compat.v1.get_variable("weights", initializer=tf.constant(TF1_WEIGHTS))
        features = tf.matmul(tf.reduce_mean(images, axis=[1, 2]), weights)
        signature = tf.compat.v1.saved_model.signature_def_utils.predict_signature_def(
            inputs={"images": images}, outputs={"default": features}
        )
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            builder = tf.compat.v1.saved_model.Builder(str(path))
            builder.add_meta_graph_and_variables(session, tags=[], signature_def_map={"default": signature})
            builder.save()
    # A ModuleDef proto with format = FORMAT_V3 (field 1, value 3) marks the TF1 Hub format.
    (path / "tfhub_module.pb").write_bytes(b"\x08\x03")


def tf1_expected_features(images):
    """The TF1 module's output computed in numpy: images float [N, 299, 299, 3]."""
    return images.mean(axis=(1, 2)) @ TF1_WEIGHTS


def write_noisy_hub_model(path):
    """Writes a TF2 SavedModel with the hub contract whose output carries fresh random
    noise on every call: a deliberately non-deterministic extractor."""
    module = tf.Module()
    module.__call__ = tf.function(
        lambda images: (
            tf.tile(tf.reduce_mean(images, axis=[1, 2]), [1, 2048 // 2 + 1])[:, :2048]
            + tf.random.uniform([tf.shape(images)[0], 2048], maxval=0.01)
        ),
        input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32)],
    )
    tf.saved_model.save(module, str(path))
