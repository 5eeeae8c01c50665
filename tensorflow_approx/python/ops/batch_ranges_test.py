"""approx_conv2d_with_batch_ranges (ApproxConv2DWithBatchRanges): the convolution with the ranges
computed inside equals range_with_zero followed by approx_conv2d_with_table, bit for bit, on random
configurations, schemes, per-channel filter ranges and table dtypes; its gradients equal that op's; bad
input is refused as that op refuses it; and the Keras layers' batch-mode inference runs it alone."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tensorflow_approx as ta
from tensorflow_approx import multipliers as mx
from tensorflow_approx.testing.conv_cases import random_config


def geometry(cfg):
    """(strides, dilations, explicit_paddings) of a random_config in its data format's order."""
    nhwc = cfg["data_format"] == "NHWC"
    s = [1, *cfg["strides"], 1] if nhwc else [1, 1, *cfg["strides"]]
    d = [1, *cfg["dilations"], 1] if nhwc else [1, 1, *cfg["dilations"]]
    pads = []
    if cfg["padding"] == "EXPLICIT":
        (pt, pb), (pl, pr) = cfg["explicit"]
        pads = [0, 0, pt, pb, pl, pr, 0, 0] if nhwc else [0, 0, 0, 0, pt, pb, pl, pr]
    return s, d, pads


def random_table(rng, kind):
    if kind == "exact":
        return tf.constant(np.asarray(mx.exact().lut, np.uint16))
    if kind == "signed":
        return tf.constant(rng.integers(-32768, 32768, 65536).astype(np.int16))
    return tf.constant(rng.integers(0, 65536, 65536).astype(np.float32))


def both(x, w, table, cfg, per_channel, **attrs):
    """(fused output, fused ranges, the three-op output, the three ranges' values)."""
    s, d, pads = geometry(cfg)
    kwargs = dict(strides=s, dilations=d, explicit_paddings=pads, padding=cfg["padding"],
                  data_format=cfg["data_format"], num_bits=cfg["num_bits"], **attrs)
    fused, ranges = ta.approx_conv2d_with_batch_ranges(x, w, table, filter_per_channel=per_channel, **kwargs)
    want_ranges = (*ta.range_with_zero(x), *ta.range_with_zero(w, per_channel=per_channel))
    plain = ta.approx_conv2d_with_table(x, w, *want_ranges, table=table, **kwargs)
    return fused, ranges, plain, want_ranges


def bits(t):
    return np.asarray(t, np.float32).view(np.uint32)


@pytest.mark.parametrize("seed", range(6))
def test_equals_range_with_zero_then_the_table_op(seed):
    rng = np.random.default_rng(400 + seed)
    for case in range(12):
        cfg = random_config(rng)
        shape = cfg["shape"] if cfg["data_format"] == "NHWC" else tuple(np.array(cfg["shape"])[[0, 3, 1, 2]])
        x = tf.constant((rng.normal(0.3, 1.5, shape) * rng.choice([1, 0.01, 50])).astype(np.float32))
        w = tf.constant(rng.normal(0, 0.4, cfg["filter_shape"]).astype(np.float32))
        per_channel = bool(rng.integers(2))
        schemes = [str(rng.choice(["asymmetric", "symmetric", "symmetric_narrow"])) for _ in range(2)]
        table = random_table(rng, str(rng.choice(["exact", "signed", "float"])))
        fused, ranges, plain, want = both(
            x, w, table, cfg, per_channel, input_scheme=schemes[0], filter_scheme=schemes[1],
            filter_num_bits=int(rng.integers(2, 9)))
        assert fused.shape == plain.shape, (case, cfg)
        np.testing.assert_array_equal(bits(fused), bits(plain), err_msg=str((case, cfg, schemes)))
        for got, expected in zip(ranges, want):
            assert got.shape == expected.shape
            np.testing.assert_array_equal(bits(got), bits(expected))


def test_ranges_are_those_of_the_whole_input_and_each_output_channel():
    x = tf.constant(np.linspace(-3, 5, 2 * 6 * 6 * 4, dtype=np.float32).reshape(2, 6, 6, 4))
    w = np.zeros((3, 3, 4, 3), np.float32)
    w[..., 0], w[..., 1], w[..., 2] = 0.5, -0.25, np.linspace(-1, 2, 36).reshape(3, 3, 4)
    _, ranges = ta.approx_conv2d_with_batch_ranges(x, tf.constant(w), "", [1, 1, 1, 1], "SAME",
                                                   filter_per_channel=True)
    assert [float(r) for r in ranges[:2]] == [-3.0, 5.0]
    np.testing.assert_array_equal(ranges[2], [0.0, -0.25, -1.0])
    np.testing.assert_array_equal(ranges[3], [0.5, 0.0, 2.0])
    _, ranges = ta.approx_conv2d_with_batch_ranges(x, tf.constant(w), "", [1, 1, 1, 1], "SAME")
    assert [float(r) for r in ranges[2:]] == [-1.0, 2.0]


def test_in_a_graph_the_shapes_are_known():
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def f(x):
        out, ranges = ta.approx_conv2d_with_batch_ranges(x, tf.ones([3, 3, 3, 5]), "", [1, 1, 1, 1], "SAME",
                                                         filter_per_channel=True)
        assert out.shape.as_list() == [None, None, None, 5]
        assert [r.shape.as_list() for r in ranges] == [[], [], [5], [5]]
        return out

    assert f(tf.ones([2, 4, 4, 3])).shape == (2, 4, 4, 5)


def test_empty_batch():
    out, ranges = ta.approx_conv2d_with_batch_ranges(tf.zeros([0, 5, 5, 2]), tf.ones([3, 3, 2, 4]), "",
                                                     [1, 1, 1, 1], "SAME")
    assert out.shape == (0, 5, 5, 4)
    assert [float(r) for r in ranges] == [0.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize("operand,bound", [("input", "input_min"), ("filter", "filter_min")])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_nan_or_infinity_is_refused_naming_the_range(operand, bound, value):
    x = np.ones((1, 4, 4, 2), np.float32)
    w = np.ones((3, 3, 2, 2), np.float32)
    (x if operand == "input" else w)[0, 1, 1, 1] = value
    with pytest.raises(tf.errors.InvalidArgumentError, match=bound[:-4]):
        ta.approx_conv2d_with_batch_ranges(tf.constant(x), tf.constant(w), "", [1, 1, 1, 1], "SAME")


def test_bad_arguments_name_themselves():
    x, w = tf.ones([1, 4, 4, 2]), tf.ones([3, 3, 2, 2])
    with pytest.raises(TypeError, match="input must be float32"):
        ta.approx_conv2d_with_batch_ranges(tf.cast(x, tf.float64), w, "", [1, 1, 1, 1], "SAME")
    with pytest.raises(TypeError, match="filter must be float32"):
        ta.approx_conv2d_with_batch_ranges(x, tf.cast(w, tf.float16), "", [1, 1, 1, 1], "SAME")
    with pytest.raises(ValueError, match="filter_scheme"):
        ta.approx_conv2d_with_batch_ranges(x, w, "", [1, 1, 1, 1], "SAME", filter_scheme="signed")
    with pytest.raises(ValueError, match="gradient"):
        ta.approx_conv2d_with_batch_ranges(x, w, "", [1, 1, 1, 1], "SAME", gradient="exact")
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="table"):
        ta.approx_conv2d_with_batch_ranges(x, w, tf.zeros([100], tf.uint16), [1, 1, 1, 1], "SAME")
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="4"):
        ta.approx_conv2d_with_batch_ranges(tf.ones([4, 4, 2]), w, "", [1, 1, 1, 1], "SAME")


@pytest.mark.parametrize("gradient", ["ste", "table"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_gradients_are_the_table_ops_at_the_computed_ranges(gradient, per_channel):
    rng = np.random.default_rng(7)
    x = tf.constant(rng.normal(0, 1, (2, 6, 6, 3)).astype(np.float32))
    w = tf.constant(rng.normal(0, 0.5, (3, 3, 3, 4)).astype(np.float32))
    table = tf.constant(np.asarray(mx.get("drum6").lut, np.float32))
    upstream = tf.constant(rng.normal(0, 1, (2, 6, 6, 4)).astype(np.float32))

    def grads(fused):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            if fused:
                y = ta.approx_conv2d_with_batch_ranges(x, w, table, [1, 1, 1, 1], "SAME", gradient=gradient,
                                                       filter_per_channel=per_channel)[0]
            else:
                ranges = (*ta.range_with_zero(x), *ta.range_with_zero(w, per_channel=per_channel))
                y = ta.approx_conv2d_with_table(x, w, *ranges, table=table, strides=[1, 1, 1, 1], padding="SAME",
                                                gradient=gradient)
        return tape.gradient(y, [x, w], output_gradients=upstream)

    got, want = grads(True), grads(False)
    for g, e in zip(got, want):
        assert g is not None and float(tf.reduce_max(tf.abs(g))) > 0
        np.testing.assert_array_equal(g, e)


def layer_cases():
    return [
        ("conv", dict(), lambda **kw: ta.FakeApproxConv2D(5, 3, padding="same", **kw), (2, 8, 8, 3)),
        ("conv_per_channel", dict(weight_quantization="per_channel", input_scheme="symmetric"),
         lambda **kw: ta.FakeApproxConv2D(4, 3, strides=2, **kw), (2, 9, 9, 4)),
        ("depthwise", dict(), lambda **kw: ta.FakeApproxDepthwiseConv2D(3, depth_multiplier=2, **kw), (1, 7, 7, 3)),
        ("dense", dict(mul_map_file="drum6"), lambda **kw: ta.FakeApproxDense(6, **kw), (5, 11)),
    ]


@pytest.mark.parametrize("name,kwargs,make,shape", layer_cases(), ids=[c[0] for c in layer_cases()])
def test_layer_inference_in_batch_mode_is_one_op_with_the_same_bits(name, kwargs, make, shape):
    rng = np.random.default_rng(11)
    layer = make(**kwargs)
    x = tf.constant(rng.normal(0.5, 2, shape).astype(np.float32))
    layer(x)  # builds
    graph = tf.function(lambda v: layer(v, training=False)).get_concrete_function(x).graph
    op_types = {op.type for op in graph.get_operations()}
    assert "ApproxConv2DWithBatchRanges" in op_types
    assert not op_types & {"ApproxRangeWithZero", "ApproxConv2DWithTable"}
    got = layer(x, training=False)

    # The same call through the three ops, as the layers made it before.
    kernel = layer._kernel_variable()
    if name == "depthwise":
        kernel = tf.reshape(kernel, [3, 3, 1, 6])
    elif name == "dense":
        kernel = tf.reshape(kernel, [1, 1, 11, 6])
    images = tf.reshape(x, [-1, 1, 1, 11]) if name == "dense" else x
    per_channel = kwargs.get("weight_quantization") == "per_channel"
    ranges = (*ta.range_with_zero(x), *ta.range_with_zero(kernel, per_channel=per_channel))
    strides = [1, 2, 2, 1] if name == "conv_per_channel" else [1, 1, 1, 1]
    padding = "SAME" if name == "conv" else "VALID"
    out = ta.approx_conv2d_with_table(
        images, kernel, *ranges, table=layer.lut, strides=strides, padding=padding,
        input_scheme=layer.input_scheme, filter_scheme=layer.weight_scheme)
    out = tf.reshape(out, got.shape[:-1] + [got.shape[-1]])
    want = layer.activation(out + layer.bias) if layer.use_bias else layer.activation(out)
    np.testing.assert_array_equal(bits(got), bits(want))


def test_layer_training_calls_keep_the_range_ops():
    layer = ta.FakeApproxConv2D(4, 3)
    x = tf.ones([1, 5, 5, 2])
    layer(x)
    graph = tf.function(lambda v: layer(v, training=True)).get_concrete_function(x).graph
    op_types = {op.type for op in graph.get_operations()}
    assert "ApproxRangeWithZero" in op_types and "ApproxConv2DWithTable" in op_types
    assert "ApproxConv2DWithBatchRanges" not in op_types
