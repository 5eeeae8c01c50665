"""The ApproxConv2DWithMinMaxVars op: loading the library, the Python wrapper and its gradient."""

import os

import tensorflow as tf

_HERE = os.path.dirname(os.path.abspath(__file__))
_LIBRARY_NAME = "_approx_conv_ops.so"


def _library_path():
    """Beside this file (wheel, Bazel runfiles), else in a source checkout's bazel-bin."""
    beside = os.path.join(_HERE, _LIBRARY_NAME)
    checkout = os.path.join(
        _HERE, "..", "..", "..", "bazel-bin", "tensorflow_approx", "python", "ops", _LIBRARY_NAME
    )
    for path in (beside, checkout):
        if os.path.exists(path):
            return os.path.normpath(path)
    return beside


_LIBRARY = _library_path()


def _load_library():
    if not os.path.exists(_LIBRARY):
        raise ImportError(
            f"tensorflow_approx: the op library {_LIBRARY} is missing. Build it with "
            "`./configure.sh && bazel build //tensorflow_approx:python/ops/_approx_conv_ops.so`, "
            "or install the wheel made by `./build_pip_pkg.sh DEST`."
        )
    try:
        return tf.load_op_library(_LIBRARY)
    except tf.errors.NotFoundError as error:
        raise ImportError(
            f"tensorflow_approx: {_LIBRARY} does not load into TensorFlow {tf.__version__} "
            f"({error}). Rebuild it against this TensorFlow: ./configure.sh && bazel build //..."
        ) from error


_ops = _load_library()


def approx_conv2d_with_min_max_vars(
    input,
    filter,
    input_min,
    input_max,
    filter_min,
    filter_max,
    strides,
    num_bits,
    mul_map_file,
    padding,
    explicit_paddings=(),
    data_format="NHWC",
    dilations=(1, 1, 1, 1),
    name=None,
):
    """Conv2D whose products come from an 8-bit approximate multiplier table.

    Input and filter are fake-quantized with their own ranges (as
    tf.quantization.fake_quant_with_min_max_vars, narrow_range=False), each product of codes is
    looked up in the table, the lookups are summed in integers, and the sum is dequantized.

    Args:
      input: 4-D tensor of half, bfloat16, float32 or float64, NHWC or NCHW by data_format.
      filter: 4-D tensor [height, width, in_depth / groups, out_depth] of the same dtype. The input
        depth may be any multiple of the filter's in depth (grouped and depthwise convolution).
      input_min, input_max, filter_min, filter_max: scalars of the same dtype, the quantization
        ranges (min <= max, finite).
      strides: 4 ints in data_format order (1 in the batch and depth dimensions).
      num_bits: code width, 2..8.
      mul_map_file: "" for the exact product, or a path to 65536 little-endian uint16 values, entry
        (a << 8) | w being the product of activation code a and weight code w.
      padding: "SAME", "VALID" or "EXPLICIT".
      explicit_paddings: with "EXPLICIT", 8 ints (before, after) per dimension, data_format order.
      data_format: "NHWC" or "NCHW".
      dilations: 4 ints in data_format order.

    Returns:
      The output tensor, of input's dtype, in data_format.

    Example:
      >>> y = approx_conv2d_with_min_max_vars(x, w, 0.0, 6.0, -1.0, 1.0, [1, 1, 1, 1], 8,
      ...                                     "mul8u_L40.bin", "SAME")
    """
    return _ops.approx_conv2d_with_min_max_vars(
        input=input,
        filter=filter,
        input_min=input_min,
        input_max=input_max,
        filter_min=filter_min,
        filter_max=filter_max,
        strides=list(strides),
        num_bits=num_bits,
        mul_map_file=mul_map_file,
        padding=padding,
        explicit_paddings=list(explicit_paddings),
        data_format=data_format,
        dilations=list(dilations),
        name=name,
    )


def _to_nhwc(values):
    """Reorders a 4-element NCHW attribute (strides, dilations) to NHWC."""
    return [values[0], values[2], values[3], values[1]]


def _same_padding(size, k, stride, dilation):
    """(before, after) of TensorFlow's SAME padding for one dimension, as tensors."""
    out = (size + stride - 1) // stride
    needed = tf.maximum((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return needed // 2, needed - needed // 2


def _patch_conv2d(x, w, strides, padding, explicit, dilations):
    """The accurate NHWC conv2d as zero padding + patch extraction + einsum.

    Any groups and dilations, on every device. Used to differentiate the configurations whose
    backprop kernels TensorFlow lacks on the CPU (grouped with dilation or with several
    channels per group, dilated).
    """
    kh, kw, cg, cout = w.shape
    if padding == "SAME":
        shape = tf.shape(x)
        top, bottom = _same_padding(shape[1], kh, strides[1], dilations[1])
        left, right = _same_padding(shape[2], kw, strides[2], dilations[2])
        pads = [[0, 0], [top, bottom], [left, right], [0, 0]]
    elif padding == "EXPLICIT":
        pads = [[0, 0], explicit[2:4], explicit[4:6], [0, 0]]
    else:
        pads = [[0, 0]] * 4
    patches = tf.image.extract_patches(
        tf.pad(x, pads), sizes=[1, kh, kw, 1], strides=strides, rates=dilations, padding="VALID"
    )
    groups = x.shape[-1] // cg
    n, ho, wo = tf.shape(patches)[0], tf.shape(patches)[1], tf.shape(patches)[2]
    patches = tf.reshape(patches, [n, ho, wo, kh, kw, groups, cg])
    y = tf.einsum("nhwijgc,ijcgo->nhwgo", patches, tf.reshape(w, [kh, kw, cg, groups, cout // groups]))
    return tf.reshape(y, [n, ho, wo, cout])


@tf.RegisterGradient("ApproxConv2DWithMinMaxVars")
def _approx_conv2d_grad(op, grad):
    """Straight-through: the gradient of the accurate conv2d at (input, filter); none for the ranges.

    Computed in NHWC. TensorFlow's Conv2DBackprop kernels serve the plain case and its depthwise
    kernels the depthwise one; on the CPU they support neither dilation nor other groupings, which
    go through the patch formulation instead.
    """
    x, w = op.inputs[0], op.inputs[1]
    strides = list(op.get_attr("strides"))
    dilations = list(op.get_attr("dilations"))
    padding = op.get_attr("padding")
    padding = padding.decode() if isinstance(padding, bytes) else padding
    explicit = list(op.get_attr("explicit_paddings"))
    data_format = op.get_attr("data_format")
    data_format = data_format.decode() if isinstance(data_format, bytes) else data_format
    if data_format == "NCHW":
        x = tf.transpose(x, [0, 2, 3, 1])
        grad = tf.transpose(grad, [0, 2, 3, 1])
        strides, dilations = _to_nhwc(strides), _to_nhwc(dilations)
        if explicit:
            explicit = explicit[0:2] + explicit[4:8] + explicit[2:4]
    kwargs = dict(strides=strides, padding=padding, explicit_paddings=explicit, data_format="NHWC")
    groups = x.shape[-1] // w.shape[2]
    dilated = dilations != [1, 1, 1, 1]
    if groups == 1 and not dilated:
        grad_input = tf.raw_ops.Conv2DBackpropInput(
            input_sizes=tf.shape(x), filter=w, out_backprop=grad, dilations=dilations, **kwargs
        )
        grad_filter = tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=tf.shape(w), out_backprop=grad, dilations=dilations, **kwargs
        )
    elif w.shape[2] == 1 and not dilated:
        # Depthwise: filter [KH, KW, 1, C * m] is the depthwise filter [KH, KW, C, m].
        kh, kw, _, cout = w.shape
        dw = tf.reshape(w, [kh, kw, groups, cout // groups])
        grad_input = tf.raw_ops.DepthwiseConv2dNativeBackpropInput(
            input_sizes=tf.shape(x), filter=dw, out_backprop=grad, **kwargs
        )
        grad_filter = tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
            input=x, filter_sizes=tf.shape(dw), out_backprop=grad, **kwargs
        )
        grad_filter = tf.reshape(grad_filter, tf.shape(w))
    else:
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            y = _patch_conv2d(x, w, strides, padding, explicit, dilations)
        grad_input, grad_filter = tape.gradient(y, [x, w], output_gradients=grad)
    if data_format == "NCHW":
        grad_input = tf.transpose(grad_input, [0, 3, 1, 2])
    return [grad_input, grad_filter, None, None, None, None]
