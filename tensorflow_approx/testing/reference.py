"""An independent NumPy model of the ops (docs/semantics.md), for tests.

Written from the contract, not from the C++ code: codes come from TensorFlow's own fake-quant ops, the
patch gathering is a plain loop over the output positions, and the integer sums use NumPy int64.

`approx_conv` is the ops' contract as they stand. `approx_conv_scheme` is the executable form of the
quantization schemes the signed/per-channel issue adds (docs/semantics.md, "Quantization schemes"):
signed codes, symmetric ranges, per-output-channel weight ranges and a code width per operand. It is
written first, so that the kernels have a yardstick; with the default scheme it is `approx_conv`.
"""

import os

import numpy as np
import tensorflow as tf

from tensorflow_approx.multipliers import operand_values


def exact_table():
    """The exact 8x8 product table: uint16[65536], entry (a << 8) | w = a * w."""
    a, w = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    return (a * w).astype(np.uint16).reshape(-1)


def write_table(path, table):
    """Writes a table in the op's file format (65536 little-endian uint16)."""
    np.asarray(table, dtype="<u2").reshape(-1).tofile(path)
    return str(path)


def shared_tables_dir():
    """../shared/axmul_8x8 beside the repository (real EvoApprox tables), or None."""
    env = os.environ.get("TFAPPROX_AXMUL_DIR")
    if env:
        return env if os.path.isdir(env) else None
    here = os.path.realpath(__file__)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(here)))
    path = os.path.join(os.path.dirname(repo), "shared", "axmul_8x8")
    return path if os.path.isdir(path) else None


def quant_params(lo, hi, num_bits):
    """(scale, nudged_min, zero_point) as float32 / int, TensorFlow's nudging."""
    lo, hi = np.float32(lo), np.float32(hi)
    qmax = np.float32(2**num_bits - 1)
    scale = np.float32((hi - lo) / qmax)
    if scale == 0:
        return np.float32(0), np.float32(0), 0
    zp_from_min = np.float32(0) - lo / scale
    zp = 0 if zp_from_min < 0 else int(qmax) if zp_from_min > qmax else int(np.round(zp_from_min))
    return scale, np.float32(np.float32(-zp) * scale), zp


def codes(x, lo, hi, num_bits):
    """Codes of x (any shape) through tf.quantization.fake_quant_with_min_max_vars."""
    scale, _, zp = quant_params(lo, hi, num_bits)
    if scale == 0:
        return np.zeros(np.shape(x), np.int64)
    fq = tf.quantization.fake_quant_with_min_max_vars(
        tf.constant(np.asarray(x, np.float32)), float(lo), float(hi), num_bits=num_bits
    ).numpy()
    return (np.round(fq / scale) + zp).astype(np.int64)


def conv_sums(qa, qw, table, strides, padding, dilations, zero_code, explicit=None):
    """Integer sums of the op for NHWC codes qa [N,H,W,C] and HWIO codes qw [KH,KW,Cg,Cout].

    Returns (acc [N,Ho,Wo,Cout], act_sum [N,Ho,Wo,G], filter_sum [Cout], taps K), all int64. Codes may
    be signed (then the table is indexed by their two's-complement bytes and the sums are of values).
    padding: "SAME", "VALID" or "EXPLICIT" with explicit = ((top, bottom), (left, right)).
    """
    n, h, w, c = qa.shape
    kh, kw, cg, cout = qw.shape
    groups = c // cg
    sh, sw = strides
    dh, dw = dilations
    ekh, ekw = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if padding == "SAME":
        ho, wo = -(-h // sh), -(-w // sw)
        pt = max(0, (ho - 1) * sh + ekh - h) // 2
        pl = max(0, (wo - 1) * sw + ekw - w) // 2
        pb, pr = max(0, (ho - 1) * sh + ekh - h) - pt, max(0, (wo - 1) * sw + ekw - w) - pl
    else:
        (pt, pb), (pl, pr) = explicit if padding == "EXPLICIT" else ((0, 0), (0, 0))
        ho = (h + pt + pb - ekh) // sh + 1
        wo = (w + pl + pr - ekw) // sw + 1
    padded = np.full((n, h + pt + pb + ekh, w + pl + pr + ekw, c), zero_code, np.int64)
    padded[:, pt : pt + h, pl : pl + w, :] = qa
    table = np.asarray(table, np.int64)
    acc = np.zeros((n, ho, wo, cout), np.int64)
    act_sum = np.zeros((n, ho, wo, groups), np.int64)
    per_group = cout // groups
    for oh in range(ho):
        for ow in range(wo):
            rows = oh * sh + dh * np.arange(kh)
            cols = ow * sw + dw * np.arange(kw)
            patch = padded[:, rows][:, :, cols]  # [N, KH, KW, C]
            for g in range(groups):
                a = patch[..., g * cg : (g + 1) * cg]  # [N, KH, KW, Cg]
                wg = qw[..., g * per_group : (g + 1) * per_group]  # [KH, KW, Cg, per_group]
                # Table index: the codes' bytes (two's complement for signed codes), row = activation.
                products = table[((a[..., None] & 0xFF) << 8) | (wg[None] & 0xFF)]
                acc[:, oh, ow, g * per_group : (g + 1) * per_group] = products.sum(axis=(1, 2, 3))
                act_sum[:, oh, ow, g] = a.sum(axis=(1, 2, 3))
    return acc, act_sum, qw.sum(axis=(0, 1, 2)), kh * kw * cg


def approx_conv(x, f, ranges, table, num_bits=8, strides=(1, 1), padding="SAME",
                dilations=(1, 1), explicit=None, dtype=np.float64):
    """The op's output for NHWC float input x and HWIO filter f, evaluated from the contract.

    ranges = (input_min, input_max, filter_min, filter_max). Returns an array of dtype in NHWC.
    """
    s1, m1, zp1 = quant_params(ranges[0], ranges[1], num_bits)
    s2, m2, _ = quant_params(ranges[2], ranges[3], num_bits)
    qa = codes(x, ranges[0], ranges[1], num_bits)
    qw = codes(f, ranges[2], ranges[3], num_bits)
    acc, act_sum, filter_sum, taps = conv_sums(qa, qw, table, strides, padding, dilations, zp1,
                                               explicit)
    groups = act_sum.shape[-1]
    act = np.repeat(act_sum, acc.shape[-1] // groups, axis=-1)
    real = np.float64 if dtype == np.float64 else np.float32
    s1, m1, s2, m2 = (real(v) for v in (s1, m1, s2, m2))
    out = (s1 * s2 * acc.astype(real) + s1 * m2 * act.astype(real)
           + s2 * m1 * filter_sum.astype(real) + real(taps) * m1 * m2)
    return out.astype(dtype)


def scheme_codes(x, lo, hi, num_bits, symmetric=False, narrow_range=False):
    """Integer code values of x and their (scale, zero_point), per tensor or per last-axis channel.

    lo, hi: scalars, or arrays over x's last axis (per channel). Asymmetric (TensorFlow's fake
    quantization): codes 0..2^b - 1 (1.. with narrow_range), zero point nudged onto a code. Symmetric:
    signed codes -2^(b-1)..2^(b-1) - 1 (narrow: from -(2^(b-1) - 1)), zero point 0, scale
    max(|lo|, |hi|) / (2^(b-1) - 1); it is TensorFlow's fake quantization on the range
    [-(2^(b-1) - 1 + (0 if narrow else 1)) * scale, (2^(b-1) - 1) * scale], codes shifted by 2^(b-1).
    Returns (codes int64 like x, scale float32 array, zero_point int64 array), the last two of shape
    () or [channels]; the dequantized value of code q is scale * (q - zero_point).
    """
    x = np.asarray(x, np.float32)
    lo = np.asarray(lo, np.float32)
    hi = np.asarray(hi, np.float32)
    per_channel = lo.ndim == 1
    shift = 0
    if symmetric:
        q = np.float32(2 ** (num_bits - 1) - 1)
        bound = np.maximum(np.abs(lo), np.abs(hi))
        step = bound / q
        lo = -(q + (0 if narrow_range else 1)) * step
        hi = q * step
        shift = 2 ** (num_bits - 1)
    qmin = 1 if narrow_range else 0
    qmax = np.float32(2**num_bits - 1)
    scale = ((hi - lo) / np.float32(qmax - qmin)).astype(np.float32)
    safe = np.where(scale == 0, np.float32(1), scale)
    zp_from_min = np.float32(qmin) - lo / safe
    zp = np.where(zp_from_min < qmin, qmin, np.where(zp_from_min > qmax, qmax, np.round(zp_from_min)))
    zp = zp.astype(np.int64)
    if per_channel:
        fq = tf.quantization.fake_quant_with_min_max_vars_per_channel(
            tf.constant(x), lo, hi, num_bits=num_bits, narrow_range=narrow_range).numpy()
    else:
        fq = tf.quantization.fake_quant_with_min_max_vars(
            tf.constant(x), float(lo), float(hi), num_bits=num_bits, narrow_range=narrow_range).numpy()
    codes = np.where(scale == 0, 0, np.round(fq / safe) + zp).astype(np.int64)
    return codes - shift, scale, np.where(scale == 0, 0, zp - shift).astype(np.int64)


def byte_products(fn, signed_a, signed_w):
    """fn(a, w) over every (activation byte, weight byte) as a table, entry (a << 8) | w: int64[65536],
    the bytes read as two's-complement int8 values where signed."""
    a, w = operand_values(signed_a), operand_values(signed_w)
    return fn(a[:, None], w[None, :]).reshape(-1).astype(np.int64)


def signed_products(table):
    """The int64 products of a signed or mixed table held as uint16 bit patterns (int16 values)."""
    t = np.asarray(table).astype(np.int64).reshape(-1)
    return t - 65536 * (t >= 32768)


def approx_conv_scheme(x, f, input_range, filter_range, products, num_bits=(8, 8),
                       symmetric=(False, False), narrow_range=(False, False), strides=(1, 1),
                       padding="SAME", dilations=(1, 1), explicit=None):
    """The output (float64, NHWC) under a quantization scheme per operand.

    input_range: (lo, hi); filter_range: (lo, hi) scalars or arrays of [Cout] (per output channel).
    products: int64[65536], entry ((a & 0xFF) << 8) | (w & 0xFF) the product of activation code a and
    weight code w (signed codes by their two's-complement bytes; signed_products() reads int16
    tables). num_bits, symmetric, narrow_range: (input, filter).
    out[co] = s1 * s2[co] * (acc - z2[co] * sum(a) - z1 * sum(w[co]) + K * z1 * z2[co]), which is
    sum((a - z1) * s1 * (w - z2) * s2) when products are the exact ones; padded taps hold code z1.
    """
    qa, s1, z1 = scheme_codes(x, *input_range, num_bits[0], symmetric[0], narrow_range[0])
    qw, s2, z2 = scheme_codes(f, *filter_range, num_bits[1], symmetric[1], narrow_range[1])
    acc, act_sum, filter_sum, taps = conv_sums(qa, qw, products, strides, padding, dilations,
                                               int(z1), explicit)
    act = np.repeat(act_sum, acc.shape[-1] // act_sum.shape[-1], axis=-1)
    s1, s2 = np.float64(s1), s2.astype(np.float64)
    z1 = int(z1)
    return s1 * s2 * (acc - z2 * act - z1 * filter_sum + taps * z1 * z2).astype(np.float64)


def table_derivatives(products, num_bits, symmetric, half_window):
    """(Da, Dw), float64 [256, 256] over the kernels' codes (signed codes + 2^(b-1) when symmetric):
    the "table" gradient's rule (tensorflow_approx/python/ops/table_gradient.py), written out."""
    products = np.asarray(products, np.int64)
    shifts = [2 ** (b - 1) if s else 0 for b, s in zip(num_bits, symmetric)]
    t = np.empty((256, 256), np.float64)
    for a in range(256):
        for w in range(256):
            t[a, w] = products[(((a - shifts[0]) & 0xFF) << 8) | ((w - shifts[1]) & 0xFF)]
    da, dw = np.empty_like(t), np.empty_like(t)
    for c in range(256):
        for axis, (out, bits) in enumerate(((da, num_bits[0]), (dw, num_bits[1]))):
            top = 2 ** bits - 1
            code = min(c, top)
            lo, hi = max(code - half_window, 0), min(code + half_window, top)
            if axis == 0:
                out[c, :] = (t[hi, :] - t[lo, :]) / max(hi - lo, 1)
            else:
                out[:, c] = (t[:, hi] - t[:, lo]) / max(hi - lo, 1)
    return da, dw


def table_gradient_model(x, f, input_range, filter_range, products, dy, half_window, num_bits=(8, 8),
                         symmetric=(False, False), strides=(1, 1), padding="SAME"):
    """(d/dx, d/df) of sum(dy * out) under the table gradient rule, by loops (NHWC, one group, no
    dilation): d out/d x_k = s2 (Da[a_k, w_k] - z2), d out/d f_k = s1 (Dw[a_k, w_k] - z1), with padded
    taps holding the activation zero point (they enter d/df only)."""
    qa, s1, z1 = scheme_codes(x, *input_range, num_bits[0], symmetric[0])
    qw, s2, z2 = scheme_codes(f, *filter_range, num_bits[1], symmetric[1])
    shifts = [2 ** (b - 1) if s else 0 for b, s in zip(num_bits, symmetric)]
    ca, cw = qa + shifts[0], qw + shifts[1]  # the kernels' codes
    da, dw = table_derivatives(products, num_bits, symmetric, half_window)
    n, h, w, c = x.shape
    kh, kw, _, cout = f.shape
    sh, sw = strides
    if padding == "SAME":
        ho, wo = -(-h // sh), -(-w // sw)
        pt = max(0, (ho - 1) * sh + kh - h) // 2
        pl = max(0, (wo - 1) * sw + kw - w) // 2
    else:
        ho, wo, pt, pl = (h - kh) // sh + 1, (w - kw) // sw + 1, 0, 0
    s2 = np.broadcast_to(np.float64(s2), (cout,))
    z2 = np.broadcast_to(z2, (cout,))
    zero_code = int(z1) + shifts[0]
    gx, gf = np.zeros(x.shape), np.zeros(f.shape)
    for b in range(n):
        for oh in range(ho):
            for ow in range(wo):
                g = dy[b, oh, ow]  # [cout]
                for i in range(kh):
                    for j in range(kw):
                        ih, iw = oh * sh - pt + i, ow * sw - pl + j
                        inside = 0 <= ih < h and 0 <= iw < w
                        for ci in range(c):
                            code = ca[b, ih, iw, ci] if inside else zero_code
                            if inside:
                                gx[b, ih, iw, ci] += np.sum(g * s2 * (da[code, cw[i, j, ci]] - z2))
                            gf[i, j, ci] += g * np.float64(s1) * (dw[code, cw[i, j, ci]] - z1)
    return gx, gf
