"""Tests of approximate_model (model conversion) and of calibrate on converted models."""

import keras
import numpy as np
import pytest

import tensorflow_approx as ta
from tensorflow_approx.testing.reference import write_table


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(4321)


def truncated_table(path, bits):
    """An approximate multiplier of our own: both operands lose their `bits` low bits."""
    a, w = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    mask = 255 & ~((1 << bits) - 1)
    return write_table(path, (a & mask) * (w & mask))


def accurate_model():
    """Functional model: conv, depthwise, a nested Sequential head (dense), dense logits."""
    inputs = keras.Input((10, 10, 2))
    h = keras.layers.Conv2D(6, 3, activation="relu", name="conv")(inputs)
    h = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, activation="relu", name="dw")(h)
    h = keras.layers.MaxPooling2D()(h)
    head = keras.Sequential(
        [
            keras.Input((3, 3, 12)),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu", name="fc"),
        ],
        name="head",
    )
    outputs = keras.layers.Dense(5, name="logits")(head(h))
    return keras.Model(inputs, outputs)


def inputs(n=256, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 10, 10, 2)).astype(np.float32)


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0, batch_size=64), axis=1) == y))


def test_layers_replaced_weights_copied_original_untouched():
    model = accurate_model()
    before = [w.numpy().copy() for w in model.weights]
    approx = ta.approximate_model(model, num_bits=7)
    kinds = {layer.name: type(layer) for layer in approx._flatten_layers(recursive=True)}
    assert kinds["conv"] is ta.FakeApproxConv2D
    assert kinds["dw"] is ta.FakeApproxDepthwiseConv2D
    assert kinds["fc"] is ta.FakeApproxDense  # inside the nested Sequential
    assert kinds["logits"] is ta.FakeApproxDense
    assert approx.get_layer("conv").num_bits == 7
    assert approx.get_layer("conv").activation is model.get_layer("conv").activation
    for a, b in zip(model.trainable_weights, approx.trainable_weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(model.weights, before):
        np.testing.assert_array_equal(a.numpy(), b)
    assert type(model.get_layer("conv")) is keras.layers.Conv2D


def test_exact_tables_keep_accuracy_coarse_table_changes_it(tmp_path):
    model = accurate_model()
    x = inputs(512)
    logits = model.predict(x, verbose=0)
    y = np.argmax(logits, axis=1)  # the accurate model is right on every sample by construction
    top2 = np.sort(logits, axis=1)[:, -2:]
    exact = ta.approximate_model(model)
    error = np.abs(exact.predict(x, verbose=0) - logits).max()
    # 8-bit fake quantization moves each logit by `error` at most; a sample whose top-2 margin
    # exceeds twice that cannot change class. Keep those: exact tables must classify all of them
    # as the accurate model does (the margin filter keeps most samples: error is ~1% of scale).
    keep = top2[:, 1] - top2[:, 0] > 2 * error
    assert keep.mean() > 0.5
    x, y = x[keep], y[keep]
    assert accuracy(model, x, y) == 1.0
    assert accuracy(exact, x, y) == 1.0
    exact_file = write_table(
        tmp_path / "exact.bin", np.multiply.outer(np.arange(256), np.arange(256))
    )
    assert accuracy(ta.approximate_model(model, mul_map_file=exact_file), x, y) == 1.0
    coarse = ta.approximate_model(model, mul_map_file=truncated_table(tmp_path / "t5.bin", 5))
    assert accuracy(coarse, x, y) < 0.9


def test_dict_assigns_tables_per_layer_and_leaves_others_accurate(tmp_path):
    model = accurate_model()
    t2 = truncated_table(tmp_path / "t2.bin", 2)
    t4 = truncated_table(tmp_path / "t4.bin", 4)
    approx = ta.approximate_model(model, mul_map_file={"conv": t2, "fc": t4})
    layers = {layer.name: layer for layer in approx._flatten_layers(recursive=True)}
    assert (layers["conv"].mul_map_file, layers["fc"].mul_map_file) == (t2, t4)
    assert type(layers["dw"]) is keras.layers.DepthwiseConv2D
    assert type(layers["logits"]) is keras.layers.Dense
    only = ta.approximate_model(model, layers=["dw"])
    assert [type(layer).__name__ for layer in only.layers[1:4]] == [
        "Conv2D",
        "FakeApproxDepthwiseConv2D",
        "MaxPooling2D",
    ]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mul_map_file": {"conv": "", "nope": ""}}, r"\['nope'\] are not"),
        ({"layers": ["max_pooling2d"]}, "are not Conv2D"),
        ({"mul_map_file": {"conv": ""}, "layers": ["conv"]}, "not both"),
        ({"mul_map_file": "/missing.bin"}, "is not a file"),
        ({"num_bits": 0}, "num_bits"),
        ({"range_mode": "ema"}, "range_mode"),
    ],
)
def test_bad_conversion_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ta.approximate_model(accurate_model(), **kwargs)


def test_converted_model_round_trip_and_fixed_ranges(tmp_path):
    model = ta.approximate_model(
        accurate_model(), range_mode="fixed", mul_map_file=truncated_table(tmp_path / "t3.bin", 3)
    )
    x = inputs(64, seed=1)
    ranges = ta.calibrate(model, x[:48], batch_size=16)
    assert set(ranges) == {"conv", "dw", "fc", "logits"}
    assert ranges["conv"] == pytest.approx((float(min(x[:48].min(), 0)), float(x[:48].max())))
    path = str(tmp_path / "approx.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert loaded.get_layer("conv").input_max.numpy() == pytest.approx(ranges["conv"][1])
