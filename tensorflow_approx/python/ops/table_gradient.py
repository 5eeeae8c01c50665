"""The "table" gradient of ApproxConv2DWithTable: the derivatives of the multiplier's own table.

The straight-through gradient ("ste") differentiates the accurate convolution: every product a * w
has derivative w along a and a along w, however the table bends it. The table gradient takes the
derivative of the approximate product itself, per pair of codes, from the table: the idea of 2-D
lookup-table gradients for approximate multipliers (LUT-2D in C. Meng, W. Burleson, G. De Micheli,
"Gradient Estimation Methods of Approximate Multipliers for High-Accuracy Retraining of Deep
Learning Models", arXiv:2509.10519, 2025). Our rule, in the codes the kernels use (a symmetric
operand's signed codes shifted by 2^(b-1), so that code order is value order):

    Da[a, w] = (T[a+, w] - T[a-, w]) / (a+ - a-),  a- = max(a - h, 0),  a+ = min(a + h, 2^b1 - 1)
    Dw[a, w] = (T[a, w+] - T[a, w-]) / (w+ - w-),  w- = max(w - h, 0),  w+ = min(w + h, 2^b2 - 1)

a secant over h = HALF_WINDOW codes on each side (a central difference smoothed over 2h code steps;
one-sided at the ends of the code range), T the table's products (signed for int16 tables). With the
output out = s1 s2 (acc - z2 sum(a) - z1 sum(w) + K z1 z2) (zero points z in the table's operand
values, 0 when symmetric), the gradients are, through the quantizers' straight-through derivative
1 / s:

    d out / d input_k  = s2 (Da[a_k, w_k] - z2),    d out / d filter_k = s1 (Dw[a_k, w_k] - z1)

For the exact product Da[a, w] = w and Dw[a, w] = a (away from the code range's ends), and both
become the accurate convolution's gradient: what "ste" computes. Padded taps hold the activation code
z1 and enter the filter's gradient as they enter the sums. The ranges and the table get no gradient.

Cost: the lookups are made per (output pixel, tap, output channel) with TensorFlow ops (gathers and
broadcast sums, on any device), holding a few values of that size at once; meant for the small networks
that are retrained, not for ImageNet-sized layers.
"""

import numpy as np
import tensorflow as tf

HALF_WINDOW = 8


def scheme_range(lo, hi, bits, scheme):
    """(lo, hi, narrow_range) of the TensorFlow fake quantization that gives the op's codes of [lo, hi]
    under `scheme` (the op's input_scheme / filter_scheme): asymmetric, [lo, hi] itself; symmetric, the
    range whose codes are the signed codes shifted by 2^(b-1), scale max(|lo|, |hi|) / (2^(b-1) - 1),
    in the op's NudgeRange's float32 steps; symmetric_narrow, the same without the lowest code."""
    if scheme in ("asymmetric", b"asymmetric"):
        return lo, hi, False
    narrow = scheme in ("symmetric_narrow", b"symmetric_narrow")
    top = float(2 ** (bits - 1) - 1)
    step = tf.maximum(tf.abs(lo), tf.abs(hi)) / top
    return -((top + (0.0 if narrow else 1.0)) * step), top * step, narrow


def _quantizer(values, lo, hi, bits, scheme, per_channel):
    """(codes int32, scale, zero point in the table's operand values) of values under TensorFlow's
    fake quantization on [lo, hi] (per last-axis channel when per_channel), as the op quantizes."""
    lo, hi, narrow = scheme_range(tf.cast(lo, tf.float32), tf.cast(hi, tf.float32), bits, scheme)
    low, top = float(narrow), float(2 ** bits - 1)  # the lowest and the highest code
    scale = (hi - lo) / (top - low)
    safe = tf.where(scale > 0, scale, 1.0)
    # TensorFlow's Nudge: the zero point rounds half away from zero (it is >= low where it is rounded).
    zero_point = tf.clip_by_value(tf.floor(low - lo / safe + 0.5), low, top)
    fake_quant = (tf.quantization.fake_quant_with_min_max_vars_per_channel if per_channel
                  else tf.quantization.fake_quant_with_min_max_vars)
    fq = fake_quant(tf.cast(values, tf.float32), lo, hi, num_bits=bits, narrow_range=narrow)
    codes = tf.where(scale > 0, tf.round(fq / safe) + zero_point, 0.0)
    shift = _code_shift(bits, scheme)
    return tf.cast(codes, tf.int32), scale, tf.where(scale > 0, zero_point, 0.0) - shift


def _code_shift(bits, scheme):
    """What the kernels add to a symmetric operand's signed codes: 2^(b-1) (0 when asymmetric)."""
    return 0 if scheme in ("asymmetric", b"asymmetric") else 2 ** (bits - 1)


def _secant_indices(bits, half_window):
    """(lower, upper, width) per code 0..255 of the secant, codes clamped to 0..2^bits - 1."""
    top = 2 ** bits - 1
    codes = np.minimum(np.arange(256), top)
    lower, upper = np.maximum(codes - half_window, 0), np.minimum(codes + half_window, top)
    return lower, upper, np.maximum(upper - lower, 1).astype(np.float32)


def derivative_tables(table, bits, shifts, half_window=HALF_WINDOW):
    """(Da, Dw), float32 [256, 256] over the kernels' codes (a, w): the rule of the module docstring.

    table: the op's table tensor (uint16, int16 signed products, or float32), entry ((a & 0xFF) << 8) |
    (w & 0xFF) for the operands' bytes; bits, shifts: (activation, weight) code widths and code shifts
    (2^(b-1) for a symmetric operand, else 0).
    """
    codes = np.arange(256)
    rows = (codes[:, None] - shifts[0]) & 0xFF
    cols = (codes[None, :] - shifts[1]) & 0xFF
    products = tf.reshape(tf.gather(tf.cast(table, tf.float32), (rows << 8 | cols).reshape(-1)), [256, 256])
    lower, upper, width = _secant_indices(bits[0], half_window)
    da = (tf.gather(products, upper) - tf.gather(products, lower)) / width[:, None]
    lower, upper, width = _secant_indices(bits[1], half_window)
    dw = (tf.gather(products, upper, axis=1) - tf.gather(products, lower, axis=1)) / width[None, :]
    return da, dw


def table_gradient(op, grad, ranges, table, patches_of, to_nhwc):
    """[grad_input, grad_filter, None...] of a table op by the table's derivatives.

    ranges: (input_min, input_max, filter_min, filter_max) of the call (the filter's scalars or per output
    channel); table: its table tensor. patches_of(x, pad_value) -> [n, ho, wo, kh, kw, groups, cg] are the
    op's patches of an NHWC tensor (padding holding pad_value); to_nhwc(x, grad) -> (x, grad) in NHWC.
    """
    x, w = op.inputs[0], op.inputs[1]
    bits = (op.get_attr("num_bits"), op.get_attr("filter_num_bits"))
    bits = (bits[0], bits[0] if bits[1] == -1 else bits[1])
    schemes = tuple(op.get_attr(name) for name in ("input_scheme", "filter_scheme"))
    nchw = op.get_attr("data_format") in (b"NCHW", "NCHW")
    x_nhwc, dy = to_nhwc(x, grad)
    kh, kw, cg, cout = w.shape
    per_channel = ranges[2].shape.rank == 1

    codes_x, s1, z1 = _quantizer(x_nhwc, ranges[0], ranges[1], bits[0], schemes[0], False)
    codes_w, s2, z2 = _quantizer(w, ranges[2], ranges[3], bits[1], schemes[1], per_channel)
    da, dw = derivative_tables(table, bits, tuple(_code_shift(b, s) for b, s in zip(bits, schemes)))

    zero_code = tf.cast(z1 + _code_shift(bits[0], schemes[0]), tf.int32)
    with tf.GradientTape() as tape:
        tape.watch(x_nhwc)
        patches = patches_of(tf.cast(x_nhwc, tf.float32), 0.0)
    tap_codes = patches_of(codes_x - zero_code, 0) + zero_code  # padded taps hold the zero point
    groups = tf.shape(tap_codes)[5]
    n, ho, wo = tf.shape(tap_codes)[0], tf.shape(tap_codes)[1], tf.shape(tap_codes)[2]
    npg = cout // groups
    w_codes = tf.transpose(tf.reshape(codes_w, [kh, kw, cg, groups, npg]), [0, 1, 3, 2, 4])  # [i, j, g, c, o]
    index = tap_codes[..., None] * 256 + w_codes[None, None, None]  # [n, ho, wo, i, j, g, c, o]
    dy_g = tf.reshape(tf.cast(dy, tf.float32), [n, ho, wo, groups, npg])
    per_out = lambda v: tf.reshape(tf.broadcast_to(v, [cout]), [groups, npg])  # noqa: E731

    # d out / d input: s2 (Da - z2), summed over the output channels that use the tap.
    # Sums of broadcast products rather than einsums: no matrix multiply, so the pass runs wherever
    # gathers and reductions do (einsum would need cuBLAS on a GPU).
    coeff = tf.gather(tf.reshape(da, [-1]), index) - per_out(z2)[:, None, :]
    grad_patches = tf.reduce_sum(coeff * (dy_g * per_out(s2))[:, :, :, None, None, :, None, :], axis=-1)
    grad_input = tape.gradient(patches, x_nhwc, output_gradients=grad_patches)
    # d out / d filter: s1 (Dw - z1), summed over the pixels.
    coeff = tf.gather(tf.reshape(dw, [-1]), index) - z1
    grad_filter = s1 * tf.transpose(tf.reduce_sum(coeff * dy_g[:, :, :, None, None, :, None, :], axis=[0, 1, 2]),
                                    [0, 1, 3, 2, 4])  # [i, j, g, c, o] -> [i, j, c, g, o]
    grad_filter = tf.reshape(grad_filter, [kh, kw, cg, cout])
    if nchw:
        grad_input = tf.transpose(grad_input, [0, 3, 1, 2])
    return [tf.cast(grad_input, x.dtype), tf.cast(grad_filter, w.dtype)] + [None] * (len(op.inputs) - 2)
