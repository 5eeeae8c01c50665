"""Calibration: run a model over data and freeze the input ranges of its approximate layers."""

import keras
import numpy as np
import tensorflow as tf

from tensorflow_approx.python.keras.layers import approx_layers


def _batches(data, batch_size):
    if isinstance(data, tf.data.Dataset):
        return data
    if isinstance(data, (np.ndarray, tf.Tensor)):
        return tf.data.Dataset.from_tensor_slices(data).batch(batch_size)
    return data  # any iterable of batches (x or (x, y[, sample_weight]))


def calibrate(model, data, steps=None, batch_size=32):
    """Records the input range of every "fixed" / "moving_average" approximate layer of `model`.

    Runs `model(x, training=False)` over the data; each such layer's input range becomes the union
    (min of the minima, max of the maxima, widened to contain 0) over all batches. A "fixed" layer
    then uses exactly that range; a "moving_average" layer starts its average from it. Ranges
    recorded before are discarded. Layers in "batch" mode have no range to record and are left
    alone. During the pass each layer quantizes with its batch range.

    Args:
      model: a built Keras model (or layer) containing approximate layers.
      data: a tf.data.Dataset of batches, an array or tensor of inputs [N, ...] (split into
        batch_size batches), or an iterable of batches; a batch may be x or (x, y[, weights]).
      steps: at most this many batches (all when None).
      batch_size: batch size used when data is an array.

    Returns:
      dict {layer name: (min, max)} of the recorded input ranges (python floats).

    Raises:
      ValueError: if the model has no layer with range state, or the data yields no batch.

    Example:
      >>> model = approximate_model(trained, mul_map_file="mul8u_L40.bin", range_mode="fixed")
      >>> calibrate(model, x_train[:1000])
      >>> model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
      >>> model.evaluate(x_test, y_test)
    """
    layers = [layer for layer in approx_layers(model) if layer.range_mode != "batch"]
    if not layers:
        raise ValueError(
            "calibrate: the model has no approximate layer with range_mode 'fixed' or "
            "'moving_average'; there is nothing to calibrate"
        )
    for layer in layers:
        if layer.built:
            layer.range_ready.assign(0.0)
        layer._calibrating = True
        layer._range_known = False
    try:
        # A fresh function, traced while the flags are on (an existing predict function is not).
        step = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        seen = 0
        for batch in _batches(data, batch_size):
            if steps is not None and seen >= steps:
                break
            x, _, _ = keras.utils.unpack_x_y_sample_weight(batch)
            step(x)
            seen += 1
    finally:
        for layer in layers:
            layer._calibrating = False
    if seen == 0:
        raise ValueError("calibrate: the data yielded no batch")
    for layer in layers:
        layer._range_known = True  # functions traced from now on skip the per-call check
    return {
        layer.name: (float(layer.input_min.numpy()), float(layer.input_max.numpy()))
        for layer in layers
    }
