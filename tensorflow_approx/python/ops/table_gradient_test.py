"""The "table" gradient of ApproxConv2DWithTable against its NumPy model (reference.table_gradient_model),
and its relation to the straight-through gradient for the exact product."""

import numpy as np
import pytest
import tensorflow as tf

import tensorflow_approx as ta
from tensorflow_approx import multipliers as mx
from tensorflow_approx.python.ops.table_gradient import HALF_WINDOW
from tensorflow_approx.testing import reference as ref


def grads(x, f, in_range, f_range, table, dy, gradient, **kwargs):
    x, f = tf.constant(x), tf.constant(f)
    with tf.GradientTape() as tape:
        tape.watch([x, f])
        y = ta.approx_conv2d_with_table(x, f, *in_range, *f_range, table, gradient=gradient, **kwargs)
    return [g.numpy() for g in tape.gradient(y, [x, f], output_gradients=tf.constant(dy))]


CASES = [
    # (symmetric, bits, per_channel, strides, padding, signed table)
    ((False, False), (8, 8), False, (1, 1), "SAME", False),
    ((False, True), (8, 4), True, (2, 2), "VALID", True),
    ((True, True), (6, 8), True, (1, 1), "SAME", True),
]


@pytest.mark.parametrize("symmetric, bits, per_channel, strides, padding, signed", CASES)
def test_table_gradient_matches_the_numpy_model(symmetric, bits, per_channel, strides, padding, signed):
    rng = np.random.default_rng(11)
    x = rng.normal(0.3, 1.0, (2, 6, 5, 3)).astype(np.float32)
    f = rng.normal(0, 0.5, (3, 3, 3, 4)).astype(np.float32)
    # An approximate table that underestimates by a quarter, in steps, plus noise: its derivatives are
    # not the exact product's.
    products = ref.byte_products(lambda a, w: (3 * a * w) // 4 // 3 * 3, *symmetric) + rng.integers(0, 40, 65536)
    products = np.clip(products, -32768, 32767) if signed else np.clip(products, 0, 65535)
    table = products.astype(np.int16 if signed else np.uint16)
    in_range = (-1.0, 2.5)
    f_range = ((f.min(axis=(0, 1, 2)), f.max(axis=(0, 1, 2))) if per_channel else (float(f.min()), float(f.max())))
    out_shape = ta.approx_conv2d_with_table(x, f, *in_range, *f_range, table, [1, *strides, 1], padding,
                                            num_bits=bits[0], filter_num_bits=bits[1]).shape
    dy = rng.normal(size=out_shape).astype(np.float32)
    gx, gf = grads(x, f, in_range, f_range, table, dy, "table", strides=[1, *strides, 1], padding=padding,
                   num_bits=bits[0], filter_num_bits=bits[1], input_scheme=["asymmetric", "symmetric"][symmetric[0]],
                   filter_scheme=["asymmetric", "symmetric"][symmetric[1]])
    want_x, want_f = ref.table_gradient_model(x, f, in_range, f_range, products, dy, HALF_WINDOW, bits, symmetric,
                                              strides, padding)
    np.testing.assert_allclose(gx, want_x, rtol=1e-4, atol=1e-4 * np.abs(want_x).max())
    np.testing.assert_allclose(gf, want_f, rtol=1e-4, atol=1e-4 * np.abs(want_f).max())
    # ... and it is not the straight-through gradient.
    ste_x, _ = grads(x, f, in_range, f_range, table, dy, "ste", strides=[1, *strides, 1], padding=padding,
                     num_bits=bits[0], filter_num_bits=bits[1])
    assert np.abs(ste_x - gx).max() > 0.05 * np.abs(ste_x).max()


@pytest.mark.parametrize("layout", ["plain", "depthwise_dilated", "grouped_nchw"])
def test_exact_table_gives_the_straight_through_gradient_on_grid_values(layout):
    """The secant of the exact product is the operand itself: on operands already on the codes' grid
    both gradients are the accurate convolution's, whatever the geometry."""
    rng = np.random.default_rng(2)
    cin, cg, cout, dil, fmt = {"plain": (3, 3, 4, 1, "NHWC"), "depthwise_dilated": (4, 1, 8, 2, "NHWC"),
                               "grouped_nchw": (4, 2, 6, 1, "NCHW")}[layout]
    in_range, f_range = (-1.0, 3.0), (-0.8, 0.8)
    x = tf.quantization.fake_quant_with_min_max_vars(rng.normal(0.5, 1, (2, 7, 7, cin)).astype(np.float32),
                                                     *in_range).numpy()
    f = tf.quantization.fake_quant_with_min_max_vars(rng.normal(0, 0.4, (3, 3, cg, cout)).astype(np.float32),
                                                     *f_range).numpy()
    if fmt == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    kwargs = dict(strides=[1, 1, 1, 1], padding="SAME", data_format=fmt,
                  dilations=[1, 1, dil, dil] if fmt == "NCHW" else [1, dil, dil, 1])
    y = ta.approx_conv2d_with_table(x, f, *in_range, *f_range, "", **kwargs)
    dy = rng.normal(size=y.shape).astype(np.float32)
    table = mx.exact().lut
    ste = grads(x, f, in_range, f_range, table, dy, "ste", **kwargs)
    tab = grads(x, f, in_range, f_range, table, dy, "table", **kwargs)
    for s, t in zip(ste, tab):
        np.testing.assert_allclose(t, s, rtol=1e-4, atol=1e-4 * np.abs(s).max())


def test_layers_train_with_the_table_gradient_and_save_it(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((8, 8, 1)),
                              ta.FakeApproxConv2D(4, 3, mul_map_file="drum4", gradient="table", activation="relu"),
                              keras.layers.Flatten(), ta.FakeApproxDense(2, mul_map_file="drum4", gradient="table")])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=keras.losses.SparseCategoricalCrossentropy(True))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (64, 8, 8, 1)).astype(np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0.5).astype(np.int64)
    losses = model.fit(x, y, epochs=8, batch_size=64, verbose=0).history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    path = str(tmp_path / "m.keras")
    model.save(path)
    assert [layer.gradient for layer in keras.models.load_model(path).layers if hasattr(layer, "gradient")] == [
        "table", "table"]
    with pytest.raises(ValueError, match="gradient must be one of"):
        ta.approx_conv2d_with_table(x, np.ones((1, 1, 1, 1), np.float32), 0.0, 1.0, 0.0, 1.0, "", [1] * 4, "SAME",
                                    gradient="lut")
