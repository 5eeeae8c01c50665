"""The Keras layers under quantization schemes: signed multipliers (symmetric codes by default),
per-channel weight ranges, a code width per operand and mixed signedness, against the NumPy model
(reference.approx_conv_scheme); training calls, saving and approximate_model keep the scheme."""

import os
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import tensorflow_approx as ta
from tensorflow_approx import multipliers as mx
from tensorflow_approx.testing import reference as ref


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(99)


def truncating(a, w):
    """A signed approximate multiplier of our own: the product with its 4 low bits cleared."""
    return (a * w) & ~15


def conv_layer(table, **kwargs):
    layer = ta.FakeApproxConv2D(4, 3, padding="same", use_bias=False, mul_map_file=table, **kwargs)
    layer.build((None, 6, 6, 3))
    return layer


def model_output(layer, x, symmetric, per_channel, bits=(8, 8), products=None):
    """The NumPy model of the layer's inference call (batch input range, kernel range, both with 0)."""
    k = layer.kernel.numpy()
    in_range = (min(float(x.min()), 0.0), max(float(x.max()), 0.0))
    axis = (0, 1, 2) if per_channel else None
    f_range = (np.minimum(k.min(axis=axis), 0), np.maximum(k.max(axis=axis), 0))
    if products is None:
        products = ref.signed_products(layer.lut.numpy().astype(np.int64) & 0xFFFF) if layer.signed_products \
            else layer.lut.numpy().astype(np.int64)
    return ref.approx_conv_scheme(x, k, in_range, f_range, products, bits, symmetric)


def inputs(shape=(2, 6, 6, 3), seed=0):
    return np.random.default_rng(seed).normal(0.2, 1.0, shape).astype(np.float32)


@pytest.mark.parametrize("per_channel", [False, True])
def test_signed_multiplier_layer_is_symmetric_and_matches_the_model(per_channel):
    m = mx.from_function(truncating, name="trunc_s", signed=True)
    layer = conv_layer(m, weight_quantization="per_channel" if per_channel else "per_tensor")
    assert layer.signed_products and layer.input_scheme == layer.weight_scheme == "symmetric"
    x = inputs()
    got = layer(x, training=False).numpy()
    want = model_output(layer, x, (True, True), per_channel, products=ref.byte_products(truncating, True, True))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("per_channel", [False, True])
def test_mixed_signedness_and_code_widths(per_channel):
    """Unsigned activations x signed 4-bit weights: a table indexed by (unsigned byte, signed byte)."""
    products = ref.byte_products(np.multiply, False, True)
    layer = conv_layer(products.astype(np.int16), input_scheme="asymmetric", weight_scheme="symmetric",
                       weight_bits=4, weight_quantization="per_channel" if per_channel else "per_tensor")
    x = np.maximum(inputs(), 0)
    got = layer(x, training=False).numpy()
    want = model_output(layer, x, (False, True), per_channel, bits=(8, 4), products=products)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_per_channel_unsigned_layer_matches_the_model():
    layer = conv_layer(mx.get("drum4"), weight_quantization="per_channel")
    layer.kernel.assign(layer.kernel * np.array([0.01, 0.1, 1.0, 10.0], np.float32))
    x = inputs()
    got = layer(x, training=False).numpy()
    want = model_output(layer, x, (False, False), True)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("kwargs", [dict(weight_quantization="per_channel"),
                                    dict(weight_quantization="per_channel", weight_bits=5),
                                    dict(input_scheme="symmetric", weight_scheme="symmetric"),
                                    dict(input_scheme="symmetric_narrow", weight_scheme="symmetric_narrow",
                                         weight_quantization="per_channel")])
def test_training_calls_fake_quantize_to_the_same_codes(kwargs):
    """A training call fake-quantizes the operands on the scheme's range first; the op must then find
    the very codes an inference call quantizes, so both calls agree bit for bit."""
    layer = conv_layer(mx.get("mitchell"), **kwargs)
    x = inputs(seed=3)
    np.testing.assert_array_equal(layer(x, training=True).numpy(), layer(x, training=False).numpy())


def test_signed_layer_trains():
    m = mx.from_function(truncating, name="trunc_s", signed=True)
    model = keras.Sequential([keras.Input((6, 6, 3)),
                              ta.FakeApproxConv2D(4, 3, mul_map_file=m, weight_quantization="per_channel"),
                              keras.layers.Flatten(), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=keras.losses.SparseCategoricalCrossentropy(True))
    x, y = inputs((32, 6, 6, 3), seed=5), np.arange(32) % 2
    losses = model.fit(x, y, epochs=5, batch_size=32, verbose=0).history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_saving_keeps_the_scheme_and_the_signed_table(tmp_path):
    m = mx.from_function(truncating, name="trunc_s", signed=True)
    model = keras.Sequential([keras.Input((6, 6, 3)),
                              ta.FakeApproxConv2D(4, 3, mul_map_file=m, weight_quantization="per_channel",
                                                  weight_bits=6)])
    x = inputs()
    before = model.predict(x, verbose=0)
    path = os.path.join(tmp_path, "signed.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    layer = loaded.layers[0]
    assert (layer.signed_products, layer.input_scheme, layer.weight_scheme, layer.weight_quantization,
            layer.weight_bits) == (True, "symmetric", "symmetric", "per_channel", 6)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), before)


def test_set_multiplier_keeps_signedness():
    layer = conv_layer(mx.get("drum4"))
    with pytest.raises(ValueError, match="computes with unsigned products"):
        layer.set_multiplier(mx.from_function(truncating, name="trunc_s", signed=True))
    signed = conv_layer(mx.from_function(truncating, name="trunc_s", signed=True))
    signed.set_multiplier(mx.from_function(np.multiply, name="exact_s", signed=True))  # same signedness: fine
    x = inputs()
    want = model_output(signed, x, (True, True), False, products=ref.byte_products(np.multiply, True, True))
    np.testing.assert_allclose(signed(x, training=False).numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_approximate_model_takes_the_scheme():
    base = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(4, 3, padding="same", name="c"),
                             keras.layers.Flatten(), keras.layers.Dense(3, name="d")])
    m = mx.from_function(truncating, name="trunc_s", signed=True)
    approx = ta.approximate_model(base, mul_map_file=m, weight_quantization="per_channel", weight_bits=7)
    for layer in ta.layers.approx_layers(approx):
        assert (layer.signed_products, layer.weight_quantization, layer.weight_bits,
                layer.input_scheme) == (True, "per_channel", 7, "symmetric")
    x = inputs()
    c = approx.get_layer("c")
    want = model_output(c, x, (True, True), True, bits=(8, 7), products=ref.byte_products(truncating, True, True))
    got = c(x, training=False).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_a_signed_c_multiplier_runs_through_the_layers(tmp_path):
    """An EvoApprox-style signed C file (int8 operands, int16 product) end to end through a layer."""
    path = os.path.join(tmp_path, "mul8s_TRN.c")
    with open(path, "w") as f:
        f.write(textwrap.dedent("""
            #include <stdint.h>
            int16_t mul8s_TRN(int8_t A, int8_t B) { return (int16_t)((A * B) & ~15); }
        """))
    m = mx.from_c_source(path)
    assert m.signed
    layer = conv_layer(m, weight_quantization="per_channel")
    x = inputs()
    want = model_output(layer, x, (True, True), True, products=ref.byte_products(truncating, True, True))
    np.testing.assert_allclose(layer(x, training=False).numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
