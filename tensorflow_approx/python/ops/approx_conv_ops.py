"""The ops ApproxConv2DWithMinMaxVars and ApproxConv2DWithTable: the library, the wrappers, the gradient.

Both compute the same thing (docs/semantics.md); the first names its table by a file attribute (the
seed's interface), the second takes it as a tensor, so a model holds its table and a new table is new
data, not a new kernel.
"""

import hashlib
import os

import numpy as np
import tensorflow as tf

from tensorflow_approx.python.ops.table_gradient import table_gradient

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

_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)
# Their DataType enums: a set lookup of an int, where `dtype in _DTYPES` ran DType.__eq__ up to four times.
_DTYPE_ENUMS = frozenset(d.as_datatype_enum for d in _DTYPES)
LUT_ENTRIES = 65536


def _float_operand(value, name, dtype=None):
    """value as a tensor of a dtype the ops take, or a TypeError naming the argument.

    Tensors keep their dtype; other values (numbers, lists, NumPy arrays) take `dtype` (the input's).
    """
    # A tensor is taken as it is: tf.convert_to_tensor of one went through TensorFlow's dispatch and
    # conversion registry, six times a call, most of the Python wrapper's time in an eager call (a 4x4
    # input: 145 us of 216 on the 2-core development machine, the op itself 71).
    if isinstance(value, tf.Tensor):
        tensor = value
    elif isinstance(value, tf.Variable) or dtype is None:
        tensor = tf.convert_to_tensor(value)
    else:
        tensor = tf.convert_to_tensor(value, dtype=dtype)
    if tensor.dtype.as_datatype_enum not in _DTYPE_ENUMS:
        raise TypeError(
            f"{name} must be a half, bfloat16, float32 or float64 tensor, got {tensor.dtype.name}"
        )
    if dtype is not None and tensor.dtype != dtype:
        raise TypeError(f"{name} must have the input's dtype {dtype.name}, got {tensor.dtype.name}")
    return tensor


def _op_arguments(input, filter, ranges, strides, num_bits, padding, explicit_paddings, data_format,
                  dilations, name):
    """The keyword arguments both ops share, operands checked and converted."""
    x = _float_operand(input, "input")
    names = ("input_min", "input_max", "filter_min", "filter_max")
    r = [_float_operand(v, n, x.dtype) for v, n in zip(ranges, names)]
    return dict(
        input=x, filter=_float_operand(filter, "filter", x.dtype), input_min=r[0], input_max=r[1],
        filter_min=r[2], filter_max=r[3], strides=list(strides), num_bits=num_bits, padding=padding,
        explicit_paddings=list(explicit_paddings), data_format=data_format,
        dilations=list(dilations), name=name,
    )


def lut_values(table, name="table"):
    """The 65536 products of `table`, checked: a Multiplier, a path ("" = exact), or an array.

    Arrays hold products (any integer dtype, or float holding integers), shape (65536,) or (256, 256),
    entry (a << 8) | w: values 0..65535 (unsigned products), or, when any is negative, -32768..32767
    (signed products, as a signed Multiplier holds them). Returns (np.ndarray of shape (65536,), uint16
    for unsigned products and int16 for signed ones, a label for provenance: the path, the
    Multiplier's name or "array").
    """
    from tensorflow_approx import multipliers as mx

    if isinstance(table, mx.Multiplier):
        bits = np.asarray(table.lut, dtype=np.uint16)
        return (bits.view(np.int16) if table.signed else bits), table.name
    if isinstance(table, (str, os.PathLike)):
        path = os.fspath(table)
        if path == "":
            return np.asarray(mx.exact().lut, dtype=np.uint16), ""
        if os.path.splitext(path)[1].lower() not in (".npy", ".c") and not mx.is_family_name(path):
            # A raw table file, whatever its extension (the seed's mul_map_file format).
            if not os.path.isfile(path):
                raise ValueError(
                    f"{name}: {path!r} is not a file (expected a table of {2 * LUT_ENTRIES} bytes: "
                    "65536 little-endian uint16, entry (a << 8) | w), '' for the exact product, a "
                    "family name, a .npy or .c file"
                )
            size = os.path.getsize(path)
            if size != 2 * LUT_ENTRIES:
                raise ValueError(
                    f"{name}: {path!r} has {size} bytes; a table has {2 * LUT_ENTRIES} "
                    "(65536 little-endian uint16)"
                )
            return np.fromfile(path, dtype="<u2").astype(np.uint16), path
        try:
            multiplier = mx.get(path)
        except (OSError, ValueError, TypeError) as error:
            raise ValueError(f"{name}: cannot read the table {path!r}: {error}") from error
        return lut_values(multiplier, name)[0], path
    values = np.asarray(table.numpy() if hasattr(table, "numpy") else table)
    if values.shape not in ((LUT_ENTRIES,), (256, 256)):
        raise ValueError(f"{name}: a table has shape (65536,) or (256, 256), got {values.shape}")
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
            raise ValueError(f"{name}: a float table must hold integers")
        values = values.astype(np.int64)
    elif values.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected an integer array, got dtype {values.dtype}")
    values = values.reshape(-1).astype(np.int64)
    signed = bool(values.min() < 0)
    lo, hi = (-32768, 32767) if signed else (0, 65535)
    bad = np.flatnonzero((values < lo) | (values > hi))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{name}: entry {i} (a={i >> 8}, w={i & 255}) is {int(values[i])}, outside {lo}..{hi} "
            f"({'signed' if signed else 'unsigned'} products fit 16 bits)")
    return values.astype(np.int16 if signed else np.uint16), "array"


SCHEMES = ("asymmetric", "symmetric", "symmetric_narrow")
GRADIENTS = ("ste", "table")


def _table_tensor(table, input_scheme, filter_scheme, gradient):
    """The table ops' table as a tensor they take, after checking the scheme and gradient arguments."""
    for arg, scheme in (("input_scheme", input_scheme), ("filter_scheme", filter_scheme)):
        if scheme not in SCHEMES:
            raise ValueError(f"{arg} must be one of {SCHEMES}, got {scheme!r}")
    if gradient not in GRADIENTS:
        raise ValueError(f"gradient must be one of {GRADIENTS}, got {gradient!r}")
    if isinstance(table, (tf.Tensor, tf.Variable)) and table.dtype in (tf.uint16, tf.int16, tf.float32):
        return table
    return tf.constant(lut_values(table)[0])


def approx_conv2d_with_table(
    input,
    filter,
    input_min,
    input_max,
    filter_min,
    filter_max,
    table,
    strides,
    padding,
    num_bits=8,
    explicit_paddings=(),
    data_format="NHWC",
    dilations=(1, 1, 1, 1),
    name=None,
    filter_num_bits=None,
    input_scheme="asymmetric",
    filter_scheme="asymmetric",
    gradient="ste",
):
    """approx_conv2d_with_min_max_vars with the multiplier as a tensor (ApproxConv2DWithTable).

    Args:
      input, filter, input_min, input_max, filter_min, filter_max, strides, padding, num_bits,
        explicit_paddings, data_format, dilations: as approx_conv2d_with_min_max_vars.
      table: the 65536 products, entry (a << 8) | w: a uint16 or float32 tensor or variable of shape
        [65536] (float32 entries must be integers in 0..65535; the layers' dtype; keep it on the host,
        where the GPU kernel takes it), an int16 tensor of signed products, or anything lut_values() takes
        (a Multiplier, a path, an array), made a constant. With a symmetric operand the table is
        indexed by the codes' bytes, ((a & 0xFF) << 8) | (w & 0xFF), two's complement for signed codes.
      filter_num_bits: the filter's code width, 2..8 (None: num_bits).
      input_scheme, filter_scheme: "asymmetric" (TensorFlow's fake quantization, the default) or
        "symmetric" (signed codes -2^(b-1)..2^(b-1) - 1, zero point 0, scale max(|min|, |max|) /
        (2^(b-1) - 1); docs/semantics.md, "Quantization schemes") or "symmetric_narrow" (the same
        without the code -2^(b-1), as TensorFlow's narrow_range).
      filter_min, filter_max: scalars, or vectors of the filter's out_depth values: a range per output
        channel (as tf.quantization.fake_quant_with_min_max_vars_per_channel, in the filter's scheme).
      gradient: "ste" (the accurate convolution's gradient at the operands, straight-through) or
        "table" (the derivatives of the table itself; tensorflow_approx/python/ops/table_gradient.py).

    Returns:
      The output tensor, of input's dtype, in data_format.

    Example:
      >>> lut = tf.Variable(mx.get("drum6").lut.astype("float32"), trainable=False)
      >>> y = approx_conv2d_with_table(x, w, 0.0, 6.0, -1.0, 1.0, lut, [1, 1, 1, 1], "SAME")
      >>> lut.assign(mx.get("mitchell").lut.astype("float32"))   # next call: the new table
    """
    args = _op_arguments(input, filter, (input_min, input_max, filter_min, filter_max), strides,
                         num_bits, padding, explicit_paddings, data_format, dilations, name)
    table = _table_tensor(table, input_scheme, filter_scheme, gradient)
    return _ops.approx_conv2d_with_table(
        table=table, filter_num_bits=-1 if filter_num_bits is None else filter_num_bits,
        input_scheme=input_scheme, filter_scheme=filter_scheme, gradient=gradient, **args)


def approx_conv2d_with_batch_ranges(
    input,
    filter,
    table,
    strides,
    padding,
    num_bits=8,
    explicit_paddings=(),
    data_format="NHWC",
    dilations=(1, 1, 1, 1),
    name=None,
    filter_num_bits=None,
    input_scheme="asymmetric",
    filter_scheme="asymmetric",
    gradient="ste",
    filter_per_channel=False,
):
    """approx_conv2d_with_table on float32 operands with the ranges computed inside the op
    (ApproxConv2DWithBatchRanges): range_with_zero(input) and range_with_zero(filter, filter_per_channel),
    the same bits as those two ops give, without them. The Keras layers' inference in range_mode
    "batch": one op per layer instead of three, which on the GPU saves two op dispatches per layer.

    Args: as approx_conv2d_with_table, without the four ranges; input and filter must be float32.
      filter_per_channel: a range per output channel of the filter (as range_with_zero's per_channel).

    Returns:
      (output, (input_min, input_max, filter_min, filter_max)): the output, float32 in data_format, and
      the ranges the op used (float32 scalars; the filter's of shape [out_depth] with filter_per_channel).
    """
    x, w = tf.convert_to_tensor(input), tf.convert_to_tensor(filter)
    for arg, tensor in (("input", x), ("filter", w)):
        if tensor.dtype != tf.float32:
            raise TypeError(f"{arg} must be float32 (the op computes float32 ranges), got {tensor.dtype.name}")
    table = _table_tensor(table, input_scheme, filter_scheme, gradient)
    output, *ranges = _ops.approx_conv2d_with_batch_ranges(
        input=x, filter=w, table=table, strides=list(strides), num_bits=num_bits, padding=padding,
        explicit_paddings=list(explicit_paddings), data_format=data_format, dilations=list(dilations),
        filter_num_bits=-1 if filter_num_bits is None else filter_num_bits, input_scheme=input_scheme,
        filter_scheme=filter_scheme, gradient=gradient, filter_per_channel=bool(filter_per_channel), name=name)
    return output, tuple(ranges)


def range_with_zero(x, per_channel=False, name=None):
    """(min, max) of x widened to hold 0, float32, in one op (ApproxRangeWithZero): the Keras layers'
    batch ranges, equal in value to tf.minimum(tf.reduce_min(x), 0.) and tf.maximum(tf.reduce_max(x), 0.)
    (a zero is +0.), both NaN where x holds a NaN, the same bits on the CPU and the GPU. One pass over x and
    one kernel launch, where those are four ops and two passes. No gradient.

    Args:
      x: a float32 tensor.
      per_channel: one range per index of x's last axis (a filter's output channels), over all other axes.
    """
    x = tf.convert_to_tensor(x)
    if x.dtype != tf.float32:
        raise TypeError(f"x must be float32, got {x.dtype.name}")
    return tuple(_ops.approx_range_with_zero(x, per_channel=per_channel, name=name))


# Tables registered in this process: table digest -> its Decomposition, or None (none within the budget).
_registered = {}


# Terms up to which register_decomposition looks by default, and the Keras layers register their tables:
# GpuPreferDecomposed's reach (16 terms; PreferDecomposed takes up to 8 on the CPU), each kernel choosing
# the decomposed path only where it is faster. 21 of the 36 EvoApprox tables decompose within 16 terms (7
# within 4); all 36 were tried in 1.2 s on a 2-core machine, the slowest in 0.26 s.
DEFAULT_MAX_TERMS = 16


def register_decomposition(table, max_terms=DEFAULT_MAX_TERMS):
    """Lets the CPU and GPU kernels run `table` as an int8 GEMM: finds an exact decomposition of its
    products (tensorflow_approx.multipliers.decompose) with at most max_terms terms and registers it for
    this process; the op then takes the decomposed kernel (AVX-512 VNNI on the CPU, or AVX2 without
    AVX-512; int8 tensor cores on the GPU) wherever the layer's shape favours it, with the same outputs bit for bit (TFAPPROX_TRACE
    names the kernel). The Keras layers register their tables themselves. Returns the Decomposition, or
    None when the table has none within the budget (the lookups stay). A table seen before is not
    decomposed again.

    table: anything lut_values() takes (a Multiplier, a path, a family name, an array of products).
    """
    from tensorflow_approx.multipliers.decompose import decompose

    if isinstance(max_terms, bool) or not isinstance(max_terms, int) or not 0 <= max_terms <= 64:
        raise ValueError(f"max_terms must be an integer in 0..64, got {max_terms!r}")
    values, _ = lut_values(table)
    key = (hashlib.sha1(values.tobytes()).hexdigest(), str(values.dtype), max_terms)
    if key not in _registered:
        signed = values.dtype == np.int16
        d = decompose(values, max_terms=max_terms, signed=signed)
        if d is not None:
            with tf.device("/CPU:0"):
                _ops.approx_register_table_decomposition(
                    table=tf.constant(values), u=tf.constant(d.U), v=tf.constant(d.V),
                    alpha=tf.constant(d.alpha.astype(np.int32)), beta=tf.constant(d.beta.astype(np.int32)),
                    c0=tf.constant(d.c0, tf.int64))
        _registered[key] = d
    return _registered[key]


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
        (a << 8) | w being the product of activation code a and weight code w. The file is read as
        it is at each call (approx_conv2d_with_table takes the table as a tensor instead).
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
    if not isinstance(mul_map_file, (str, bytes)):
        raise TypeError(f"mul_map_file must be a path string or '', got {mul_map_file!r}")
    args = _op_arguments(input, filter, (input_min, input_max, filter_min, filter_max), strides,
                         num_bits, padding, explicit_paddings, data_format, dilations, name)
    for arg in ("input_min", "input_max", "filter_min", "filter_max"):
        # The seed's op takes scalar ranges only (the table op also takes per-channel filter ranges);
        # eager calls run through the table op, so say it here as the graph's shape check does.
        if args[arg].shape.rank not in (None, 0):
            raise ValueError(f"{arg} must be a scalar, got shape {args[arg].shape}; per-channel filter "
                             "ranges need approx_conv2d_with_table")
    if tf.executing_eagerly():
        # The same computation through the table op, the file read by ApproxReadMulMap (same checks,
        # same cache): eager TensorFlow keeps a kernel for every new attribute value, so a path as an
        # attribute would cost memory for every table file ever used (a search over thousands).
        return _ops.approx_conv2d_with_table(table=_ops.approx_read_mul_map(mul_map_file), **args)
    return _ops.approx_conv2d_with_min_max_vars(mul_map_file=mul_map_file, **args)


def _to_nhwc(values):
    """Reorders a 4-element NCHW attribute (strides, dilations) to NHWC."""
    return [values[0], values[2], values[3], values[1]]


def _same_padding(size, k, stride, dilation):
    """(before, after) of TensorFlow's SAME padding for one dimension, as tensors."""
    out = (size + stride - 1) // stride
    needed = tf.maximum((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return needed // 2, needed - needed // 2


def _patches(x, filter_shape, strides, padding, explicit, dilations, pad_value=0):
    """The NHWC convolution's input patches, [n, ho, wo, kh, kw, groups, cg], the padding holding
    pad_value; the filter's shape [kh, kw, cg, cout] must be known statically."""
    kh, kw, cg, _ = filter_shape
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
        tf.pad(x, pads, constant_values=pad_value), sizes=[1, kh, kw, 1], strides=strides, rates=dilations,
        padding="VALID"
    )
    groups = tf.shape(x)[-1] // cg
    n, ho, wo = tf.shape(patches)[0], tf.shape(patches)[1], tf.shape(patches)[2]
    return tf.reshape(patches, [n, ho, wo, kh, kw, groups, cg])


def _patch_conv2d(x, w, strides, padding, explicit, dilations):
    """The accurate NHWC conv2d as zero padding + patch extraction + einsum.

    Any groups and dilations, on every device; the filter's shape must be known statically, the
    input's need not be. Used to differentiate the configurations whose backprop kernels TensorFlow
    lacks on the CPU (grouped with dilation or with several channels per group, dilated).
    """
    kh, kw, cg, cout = w.shape
    patches = _patches(x, w.shape, strides, padding, explicit, dilations)
    groups = tf.shape(patches)[5]
    n, ho, wo = tf.shape(patches)[0], tf.shape(patches)[1], tf.shape(patches)[2]
    filters = tf.reshape(w, [kh, kw, cg, groups, cout // groups])
    y = tf.einsum("nhwijgc,ijcgo->nhwgo", patches, filters)
    return tf.reshape(y, [n, ho, wo, cout])


def _attr(op, name):
    value = op.get_attr(name)
    return value.decode() if isinstance(value, bytes) else value


def _nhwc_geometry(op):
    """(strides, dilations, padding, explicit_paddings) of the op in NHWC terms."""
    strides = list(op.get_attr("strides"))
    dilations = list(op.get_attr("dilations"))
    explicit = list(op.get_attr("explicit_paddings"))
    if _attr(op, "data_format") == "NCHW":
        strides, dilations = _to_nhwc(strides), _to_nhwc(dilations)
        if explicit:
            explicit = explicit[0:2] + explicit[4:8] + explicit[2:4]
    return strides, dilations, _attr(op, "padding"), explicit


def _to_nhwc_tensors(op, *tensors):
    """The op's 4-D tensors (input, output gradient) in NHWC."""
    if _attr(op, "data_format") == "NCHW":
        return tuple(tf.transpose(t, [0, 2, 3, 1]) for t in tensors)
    return tensors


def _conv_grad(op, grad, ranges=None, table=None):
    """ApproxConv2DWithTable's gradient: straight-through, or the table's own for gradient="table"
    (at the op's range and table inputs, or at `ranges` and `table` where given)."""
    if _attr(op, "gradient") == "table":
        strides, dilations, padding, explicit = _nhwc_geometry(op)
        return table_gradient(
            op, grad,
            ranges=op.inputs[2:6] if ranges is None else ranges,
            table=op.inputs[6] if table is None else table,
            patches_of=lambda t, pad_value: _patches(t, op.inputs[1].shape, strides, padding, explicit, dilations,
                                                     pad_value),
            to_nhwc=lambda *tensors: _to_nhwc_tensors(op, *tensors))
    return _straight_through_grad(op, grad)


def _batch_ranges_grad(op, grad, *unused_range_grads):
    """ApproxConv2DWithBatchRanges': ApproxConv2DWithTable's at the ranges it computed (its outputs 1-4)."""
    return _conv_grad(op, grad, ranges=op.outputs[1:5], table=op.inputs[2])


def _straight_through_grad(op, grad):
    """Straight-through: the gradient of the accurate conv2d at (input, filter); none for the ranges
    and the table.

    Computed in NHWC. TensorFlow's Conv2DBackprop kernels serve the plain case and its depthwise
    kernels the depthwise one; on the CPU they support neither dilation nor other groupings, which
    go through the patch formulation instead. When the channel counts are not known statically
    (e.g. a tf.function traced with TensorSpec([None] * 4)), the choice is made at run time.
    """
    w = op.inputs[1]
    x, grad = _to_nhwc_tensors(op, op.inputs[0], grad)
    strides, dilations, padding, explicit = _nhwc_geometry(op)
    data_format = _attr(op, "data_format")
    kwargs = dict(strides=strides, padding=padding, explicit_paddings=explicit, data_format="NHWC")
    dilated = dilations != [1, 1, 1, 1]

    def plain():
        grad_input = tf.raw_ops.Conv2DBackpropInput(
            input_sizes=tf.shape(x), filter=w, out_backprop=grad, dilations=dilations, **kwargs
        )
        grad_filter = tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=tf.shape(w), out_backprop=grad, dilations=dilations, **kwargs
        )
        return grad_input, grad_filter

    def depthwise():
        # Filter [KH, KW, 1, C * m] is the depthwise filter [KH, KW, C, m].
        kh, kw, _, cout = w.shape
        groups = x.shape[-1]
        dw = tf.reshape(w, [kh, kw, groups, cout // groups])
        grad_input = tf.raw_ops.DepthwiseConv2dNativeBackpropInput(
            input_sizes=tf.shape(x), filter=dw, out_backprop=grad, **kwargs
        )
        grad_filter = tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
            input=x, filter_sizes=tf.shape(dw), out_backprop=grad, **kwargs
        )
        return grad_input, tf.reshape(grad_filter, tf.shape(w))

    def patches():
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            y = _patch_conv2d(x, w, strides, padding, explicit, dilations)
        return tuple(tape.gradient(y, [x, w], output_gradients=grad))

    channels = x.shape[-1] if x.shape.rank is not None else None
    filter_known = w.shape.rank == 4 and all(d is not None for d in w.shape[:3])
    if channels is not None and w.shape.rank == 4 and w.shape[2] is not None:
        groups = channels // w.shape[2]
        if groups == 1 and not dilated:
            grad_input, grad_filter = plain()
        elif w.shape[2] == 1 and not dilated:
            grad_input, grad_filter = depthwise()
        else:
            grad_input, grad_filter = patches()
    elif filter_known:
        # Groups known only at run time: the plain kernels when there is one, else the patches.
        if dilated:
            grad_input, grad_filter = patches()
        else:
            one_group = tf.equal(tf.shape(x)[-1], w.shape[2])
            grad_input, grad_filter = tf.cond(one_group, plain, patches)
    else:
        if dilated:
            raise ValueError(
                "the gradient of a dilated ApproxConv2D needs the filter's shape known statically"
            )
        check = tf.debugging.assert_equal(
            tf.shape(x)[-1],
            tf.shape(w)[2],
            message="the gradient of a grouped ApproxConv2D needs the filter's shape known statically",
        )
        with tf.control_dependencies([check]):
            grad_input, grad_filter = plain()
    if data_format == "NCHW":
        grad_input = tf.transpose(grad_input, [0, 3, 1, 2])
    return [grad_input, grad_filter] + [None] * (len(op.inputs) - 2)


tf.RegisterGradient("ApproxConv2DWithMinMaxVars")(_straight_through_grad)
tf.RegisterGradient("ApproxConv2DWithTable")(_conv_grad)
tf.RegisterGradient("ApproxConv2DWithBatchRanges")(_batch_ranges_grad)
tf.no_gradient("ApproxRangeWithZero")  # a quantization range is a constant of the computation
