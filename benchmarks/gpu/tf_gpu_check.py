"""Inside TensorFlow on a GPU machine: the GPU kernels of both ops, bit for bit against the CPU kernels.

Random configurations (dtypes, NHWC/NCHW, paddings, strides, dilations, groups, num_bits, tables as a
file / uint16 tensor / float32 variable; symmetric schemes, 4-bit weights, int16 tables and per-channel
filter ranges, with ranges reduced on the device), NaN inputs and filters, an invalid float32 table (an
error on both devices), refused ranges (all NaN on the GPU, an error on the CPU), registered decompositions
(the tensor-core kernel, which TFAPPROX_TRACE must name, against the CPU), and the Keras layers: predict on
the GPU equal to the CPU, the table variable on the host, set_multiplier without retracing; the "table"
gradient on the GPU against the CPU (equal to float32 rounding); range_with_zero (the layers' batch ranges)
and the convolution with its ranges computed inside (their inference), a signed layer among them, on the
GPU against the CPU. Prints a short table; exit status 1 on any mismatch.

    python3 benchmarks/gpu/tf_gpu_check.py [--cases N] [--seed S]

Needs a GPU TensorFlow and the installed tensorflow_approx wheel (see ../shared/tools/tf-gpu). The
float convolution (cuDNN) is not used: references are the CPU kernels of the same ops.
"""

import argparse
import os
import sys
import tempfile

import numpy as np
import tensorflow as tf

import tensorflow_approx as ta
from tensorflow_approx import multipliers as mx

DTYPES = {"float32": tf.float32, "float64": tf.float64, "float16": tf.float16, "bfloat16": tf.bfloat16}


def bits(t):
    return tf.bitcast(t, {2: tf.uint16, 4: tf.uint32, 8: tf.uint64}[t.dtype.size]).numpy()


def random_case(rng):
    dtype = rng.choice(list(DTYPES))
    nchw = bool(rng.integers(2))
    groups = int(rng.choice([1, 1, 2, 3]))
    cg = int(rng.choice([1, 2, 3, 8, 16]))
    out_per_group = int(rng.choice([1, 4, 16, 32, 64]))
    k = int(rng.choice([1, 3, 5]))
    size = int(rng.choice([4, 7, 9, 16]))
    batch = int(rng.choice([1, 2, 5]))
    stride = int(rng.choice([1, 1, 2]))
    dilation = int(rng.choice([1, 1, 2])) if stride == 1 else 1
    padding = str(rng.choice(["SAME", "VALID", "EXPLICIT"]))
    if padding != "SAME" and (k - 1) * dilation + 1 > size:
        padding = "SAME"  # the dilated filter must fit the unpadded input
    return dict(dtype=dtype, nchw=nchw, groups=groups, cg=cg, cout=groups * out_per_group, k=k, size=size,
                batch=batch, stride=stride, dilation=dilation, padding=padding,
                num_bits=int(rng.choice([8, 8, 6, 4])))


def layout(c):
    """(data_format, strides, dilations) of a random_case in its data format's order."""
    if c["nchw"]:
        return "NCHW", [1, 1, c["stride"], c["stride"]], [1, 1, c["dilation"], c["dilation"]]
    return "NHWC", [1, c["stride"], c["stride"], 1], [1, c["dilation"], c["dilation"], 1]


def run_case(c, rng, tables, nan):
    cin = c["groups"] * c["cg"]
    x = rng.normal(size=(c["batch"], c["size"], c["size"], cin)).astype(np.float32)
    x[x < 0] = 0  # ReLU-like: half at the zero point
    w = rng.normal(scale=0.3, size=(c["k"], c["k"], c["cg"], c["cout"])).astype(np.float32)
    if nan:
        x[0, rng.integers(c["size"]), rng.integers(c["size"]), rng.integers(cin)] = np.nan
        if rng.integers(2):
            w[rng.integers(c["k"]), rng.integers(c["k"]), rng.integers(c["cg"]), rng.integers(c["cout"])] = np.nan
    if c["nchw"]:
        x = x.transpose(0, 3, 1, 2)
    dtype = DTYPES[c["dtype"]]
    fmt, strides, dilations = layout(c)
    explicit = []
    if c["padding"] == "EXPLICIT":
        pads = [int(p) for p in rng.integers(0, 3, size=4)]
        explicit = [0, 0, 0, 0] + pads if c["nchw"] else [0, 0] + pads + [0, 0]
    name, path, lut = tables[int(rng.integers(len(tables)))]
    kw = dict(strides=strides, padding=c["padding"], explicit_paddings=explicit, data_format=fmt,
              dilations=dilations)
    ranges = (0.0, float(np.nanmax(x)) + 0.1, -1.0, 1.0)
    results = {}
    for device in ("/CPU:0", "/GPU:0"):
        with tf.device(device):
            xt, wt = tf.cast(x, dtype), tf.cast(w, dtype)
            r = [tf.constant(v, dtype) for v in ranges]
            results[device, "file"] = ta.approx_conv2d_with_min_max_vars(
                xt, wt, *r, num_bits=c["num_bits"], mul_map_file=path, **kw)
            # In a graph the file op runs its own kernel (eager calls go through the table op).
            results[device, "file-graph"] = tf.function(lambda: ta.approx_conv2d_with_min_max_vars(
                xt, wt, *r, num_bits=c["num_bits"], mul_map_file=path, **kw))()
            results[device, "u16"] = ta.approx_conv2d_with_table(
                xt, wt, *r, table=tf.constant(lut), num_bits=c["num_bits"], **kw)
            results[device, "f32"] = ta.approx_conv2d_with_table(
                xt, wt, *r, table=tf.Variable(lut.astype(np.float32)), num_bits=c["num_bits"], **kw)
    cpu = results["/CPU:0", "file"]
    ok = all(np.array_equal(bits(cpu), bits(results[key])) for key in results)
    # Quantization schemes (symmetric operands, a code width per operand) and int16 tables of signed
    # products: the GPU against the CPU on the same call, with the ranges reduced on each device.
    scheme = dict(input_scheme=str(rng.choice(["asymmetric", "symmetric", "symmetric_narrow"])),
                  filter_scheme=str(rng.choice(["asymmetric", "symmetric", "symmetric_narrow"])),
                  filter_num_bits=int(rng.choice([-1, 8, 4])), num_bits=c["num_bits"])
    table = (rng.integers(-32768, 32768, size=65536).astype(np.int16) if rng.integers(2)
             else rng.integers(0, 65536, size=65536).astype(np.uint16))
    # Per-channel filter ranges in half the cases, over channels of unequal scale (ranges that hold 0,
    # so that a channel of one repeated value is not a refused zero-width range).
    per_channel = bool(rng.integers(2))
    w_scheme = w * rng.uniform(0.1, 3.0, size=c["cout"]).astype(np.float32) if per_channel else w
    scheme_out = {}
    for device in ("/CPU:0", "/GPU:0"):
        with tf.device(device):
            xt, wt = tf.cast(x, dtype), tf.cast(w_scheme, dtype)
            axis = [0, 1, 2] if per_channel else None
            r = [tf.minimum(tf.reduce_min(xt), 0), tf.maximum(tf.reduce_max(xt), 0),
                 tf.minimum(tf.reduce_min(wt, axis=axis), 0), tf.maximum(tf.reduce_max(wt, axis=axis), 0)]
            if nan:  # NaN ranges are refused; keep the NaN in the operands only
                r = [tf.constant(v, dtype) for v in ranges]
                if per_channel:
                    r[2:] = [tf.fill([c["cout"]], tf.constant(v, dtype)) for v in ranges[2:]]
            scheme_out[device] = ta.approx_conv2d_with_table(xt, wt, *r, table=tf.constant(table), **scheme, **kw)
    same_scheme = np.array_equal(bits(scheme_out["/CPU:0"]), bits(scheme_out["/GPU:0"]))
    if not same_scheme:
        print("  scheme case differs:", scheme, table.dtype, "per-channel" if per_channel else "per-tensor")
    ok = ok and same_scheme
    if not ok:
        for key in results:
            a, b = bits(cpu), bits(results[key])
            nan_a = np.isnan(tf.cast(cpu, tf.float32).numpy())
            nan_b = np.isnan(tf.cast(results[key], tf.float32).numpy())
            print("  ", key, "differing:", int((a != b).sum()), "NaN masks equal:", np.array_equal(nan_a, nan_b),
                  "non-NaN differing:", int(((a != b) & ~nan_a).sum()), "bits", hex(a[a != b][0]) if (a != b).any() else "",
                  hex(b[a != b][0]) if (a != b).any() else "")
    return ok, name, int(np.prod(cpu.shape)), int(np.isnan(tf.cast(cpu, tf.float32).numpy()).sum())


def check_table_gradient(rng, cases=12):
    """The "table" gradient (gathers and broadcast sums, no matmul: it runs on the stand-ins) on the GPU
    against the CPU: the same ops, summed in another order, so equal to float32 rounding. Returns the
    largest difference relative to the gradient's largest magnitude."""
    worst = 0.0
    for i in range(cases):
        cin, cout, k = int(rng.choice([3, 8])), int(rng.choice([4, 16])), int(rng.choice([1, 3]))
        x = rng.normal(0.2, 1.0, (2, 7, 7, cin)).astype(np.float32)
        w = rng.normal(0, 0.3, (k, k, cin, cout)).astype(np.float32)
        signed = bool(i % 2)
        table = (rng.integers(-20000, 20000, 65536).astype(np.int16) if signed
                 else rng.integers(0, 65536, 65536).astype(np.uint16))
        scheme = "symmetric" if signed else str(rng.choice(["asymmetric", "symmetric_narrow"]))
        per_channel = bool(rng.integers(2))
        grads = {}
        for device in ("/CPU:0", "/GPU:0"):
            with tf.device(device):
                xt, wt = tf.constant(x), tf.constant(w)
                with tf.GradientTape() as tape:
                    tape.watch([xt, wt])
                    axis = [0, 1, 2] if per_channel else None
                    r = [tf.minimum(tf.reduce_min(xt), 0.0), tf.maximum(tf.reduce_max(xt), 0.0),
                         tf.minimum(tf.reduce_min(wt, axis=axis), 0.0), tf.maximum(tf.reduce_max(wt, axis=axis), 0.0)]
                    y = ta.approx_conv2d_with_table(xt, wt, *r, table=tf.constant(table), strides=[1, 1, 1, 1],
                                                    padding="SAME", input_scheme=scheme, filter_scheme=scheme,
                                                    gradient="table")
                    loss = tf.reduce_sum(y * tf.cos(y))
                grads[device] = [g.numpy() for g in tape.gradient(loss, [xt, wt])]
        for a, b in zip(grads["/CPU:0"], grads["/GPU:0"]):
            worst = max(worst, float(np.abs(a - b).max() / (np.abs(a).max() + 1e-30)))
    return worst


def check_invalid_table():
    """A float32 table entry that is not an integer: InvalidArgument naming it on both devices (the GPU
    kernel checks its table on the host)."""
    lut = mx.exact().lut.astype(np.float32)
    lut[7] = 0.5
    x, w = tf.ones([1, 4, 4, 2]), tf.ones([3, 3, 2, 3])
    errors = []
    for device in ("/GPU:0", "/CPU:0"):
        with tf.device(device):
            try:
                ta.approx_conv2d_with_table(x, w, 0.0, 1.0, 0.0, 1.0, tf.constant(lut), [1, 1, 1, 1], "SAME").numpy()
                errors.append(False)
            except tf.errors.InvalidArgumentError as error:
                errors.append("table entry 7" in str(error))
    return all(errors)


def check_decomposed(rng, trace_path):
    """Tables registered with ta.register_decomposition (up to 16 terms) on layer shapes where the GPU
    picks its tensor-core kernel: the GPU's outputs bit for bit the CPU's, asymmetric and symmetric codes
    (the decomposition rearranged for shifted codes). Returns (cases, outputs, mismatches, GPU
    configurations the trace names the decomposed kernel for, of them with a wgmma tile, with the halo
    tile, with a plan the first call tuned, with the halo tile beside the pre-pass, with the TMA tile, with
    a pointwise tile, beside the pre-pass with the streaming hints)."""
    tables = []
    for name in ("exact", "drum4", "optrunc3", "coltrunc8", "etm3"):
        lut = np.asarray(mx.get(name).lut, np.uint16)
        if ta.register_decomposition(lut, max_terms=16) is not None:
            tables.append((name, lut))
    # Calls past GpuPreferDecomposed's floor: batch 1000 of ResNet-20's 16- and 32-channel layers (the halo
    # tile's), and big layers at batch 32, a 1x1 one among them (the pointwise tile's).
    shapes = [(32, 28, 128, 128, 3), (32, 14, 256, 256, 3), (1000, 16, 32, 32, 3), (1000, 32, 16, 16, 3),
              (32, 56, 64, 64, 3), (32, 56, 64, 256, 1)]
    cases, outputs, mismatches = 0, 0, 0
    for name, lut in tables:
        for batch, size, cin, cout, k in shapes:
            scheme = str(rng.choice(["asymmetric", "symmetric"]))
            dtype = DTYPES[str(rng.choice(["float32", "float16", "bfloat16"]))]
            x = np.maximum(rng.normal(size=(batch, size, size, cin)), 0).astype(np.float32)
            w = rng.normal(scale=0.3, size=(k, k, cin, cout)).astype(np.float32)
            out = {}
            for device in ("/CPU:0", "/GPU:0"):
                with tf.device(device):
                    xt, wt = tf.cast(x, dtype), tf.cast(w, dtype)
                    r = [tf.minimum(tf.reduce_min(xt), 0), tf.maximum(tf.reduce_max(xt), 0),
                         tf.minimum(tf.reduce_min(wt), 0), tf.maximum(tf.reduce_max(wt), 0)]
                    out[device] = ta.approx_conv2d_with_table(xt, wt, *r, table=tf.constant(lut), strides=[1, 1, 1, 1],
                                                              padding="SAME", input_scheme=scheme, filter_scheme=scheme)
            cases += 1
            outputs += int(np.prod(out["/CPU:0"].shape))
            if not np.array_equal(bits(out["/CPU:0"]), bits(out["/GPU:0"])):
                mismatches += 1
                print("  decomposed case differs:", name, (batch, size, cin, cout, k), scheme, dtype.name)
    with open(trace_path) as f:
        picked = [line for line in f if "device=GPU" in line and "kernel=tensor-cores-decomposed" in line]
    sm90a = ("-wgmma", "-tma", "-pw")  # the tiles built for sm_90a only
    return (cases, outputs, mismatches, len(picked), sum(any(t in line for t in sm90a) for line in picked),
            sum("-halo" in line for line in picked), sum("-tuned\t" in line for line in picked),
            sum("-halo-beside-" in line for line in picked), sum("-tma" in line for line in picked),
            sum("-pw" in line for line in picked), sum("-beside-streaming-" in line for line in picked))


def check_invalid_ranges():
    """Ranges the CPU refuses (InvalidArgument naming them) make every GPU output NaN."""
    lut = mx.exact().lut
    x, w = tf.ones([1, 4, 4, 2]), tf.ones([3, 3, 2, 3])
    ok = True
    for bounds in [(1.0, 0.0, 0.0, 1.0), (0.0, 1.0, 0.5, 0.5), (0.0, float("inf"), 0.0, 1.0),
                   (0.0, 1.0, float("nan"), 1.0)]:
        with tf.device("/GPU:0"):
            y = ta.approx_conv2d_with_table(x, w, *bounds, table=tf.constant(lut), strides=[1, 1, 1, 1],
                                            padding="SAME")
        gpu_all_nan = bool(np.isnan(y.numpy()).all())
        with tf.device("/CPU:0"):
            try:
                ta.approx_conv2d_with_table(x, w, *bounds, table=tf.constant(lut), strides=[1, 1, 1, 1],
                                            padding="SAME")
                cpu_error = False
            except tf.errors.InvalidArgumentError as error:
                cpu_error = "input_m" in str(error) or "filter_m" in str(error)
        if not (gpu_all_nan and cpu_error):
            print("  invalid ranges", bounds, "GPU all NaN:", gpu_all_nan, "CPU error:", cpu_error)
        ok = ok and gpu_all_nan and cpu_error
    return ok


def check_ranges(rng, cases=40):
    """range_with_zero on the GPU against the CPU, bit for bit (any NaN counting as NaN): random shapes
    from empty to a ResNet-20 activation at batch 1000 (many blocks meeting in the atomics), per tensor
    and per channel, with NaN of either sign, infinities, -0 and subnormals. Returns (cases, mismatches)."""
    shapes = [(0, 4), (1,), (5, 3), (3, 3, 16, 16), (3, 3, 512, 512), (1000, 32, 32, 16), (7, 13, 29, 3)]
    mismatches = 0
    for i in range(cases):
        shape = shapes[i % len(shapes)]
        x = rng.normal(0, 2, shape).astype(np.float32)
        flat = x.reshape(-1)
        if flat.size:
            for value in (-0.0, np.inf, -np.inf, 1e-45, -1e-45, np.nan, -np.nan)[: int(rng.integers(0, 8))]:
                flat[int(rng.integers(flat.size))] = value
        per_channel = bool(i % 2)
        got = {}
        for device in ("/CPU:0", "/GPU:0"):
            with tf.device(device):
                got[device] = [t.numpy() for t in ta.range_with_zero(tf.constant(x), per_channel=per_channel)]
        for cpu, gpu in zip(got["/CPU:0"], got["/GPU:0"]):
            nan_same = np.array_equal(np.isnan(cpu), np.isnan(gpu))
            if not (nan_same and np.array_equal(np.asarray(cpu)[~np.isnan(cpu)].view(np.uint32),
                                                np.asarray(gpu)[~np.isnan(gpu)].view(np.uint32))):
                mismatches += 1
                print("  range differs:", shape, "per-channel" if per_channel else "per-tensor")
    return cases, mismatches


def check_batch_ranges(rng, cases=40):
    """approx_conv2d_with_batch_ranges (the layers' inference in "batch" mode: ranges computed inside the
    op) on the GPU against the CPU, output and the four ranges bit for bit: random float32 configurations,
    schemes, per-channel filter ranges, uint16 / int16 tables; a NaN or infinity in every fifth case (GPU
    all NaN, CPU an error naming the bound). Then a signed Keras layer (int16 table cast on the host) and
    an unsigned per-channel one, GPU == CPU. Returns (cases, mismatches)."""
    import keras

    mismatches = 0
    for i in range(cases):
        c = random_case(rng)
        cin = c["groups"] * c["cg"]
        x = np.maximum(rng.normal(size=(c["batch"], c["size"], c["size"], cin)), 0).astype(np.float32)
        w = rng.normal(scale=0.3, size=(c["k"], c["k"], c["cg"], c["cout"])).astype(np.float32)
        special = i % 5 == 4
        if special:
            target = x if rng.integers(2) else w
            target.reshape(-1)[int(rng.integers(target.size))] = rng.choice([np.nan, np.inf, -np.inf])
        if c["nchw"]:
            x = x.transpose(0, 3, 1, 2)
        fmt, strides, dilations = layout(c)
        padding = "VALID" if c["padding"] == "EXPLICIT" else c["padding"]
        table = (rng.integers(-32768, 32768, size=65536).astype(np.int16) if rng.integers(2)
                 else rng.integers(0, 65536, size=65536).astype(np.uint16))
        kw = dict(strides=strides, padding=padding, data_format=fmt, dilations=dilations, num_bits=c["num_bits"],
                  input_scheme=str(rng.choice(["asymmetric", "symmetric", "symmetric_narrow"])),
                  filter_scheme=str(rng.choice(["asymmetric", "symmetric", "symmetric_narrow"])),
                  filter_num_bits=int(rng.choice([-1, 8, 4])), filter_per_channel=bool(rng.integers(2)))
        got = {}
        for device in ("/CPU:0", "/GPU:0"):
            with tf.device(device):
                try:
                    out, ranges = ta.approx_conv2d_with_batch_ranges(tf.constant(x), tf.constant(w),
                                                                     tf.constant(table), **kw)
                    got[device] = [out.numpy(), *(r.numpy() for r in ranges)]
                except tf.errors.InvalidArgumentError as error:
                    got[device] = str(error)
        cpu, gpu = got["/CPU:0"], got["/GPU:0"]
        if special:
            ok = isinstance(cpu, str) and "min" in cpu and not isinstance(gpu, str) and bool(np.isnan(gpu[0]).all())
        else:
            ok = not isinstance(cpu, str) and not isinstance(gpu, str) and all(
                a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32)) for a, b in zip(cpu, gpu))
        if not ok:
            mismatches += 1
            print("  batch-ranges case differs:", c, kw, "special" if special else "")
    # Keras layers in "batch" mode, which run the op above in inference.
    truncating = lambda a, w: (a >> 2 << 2) * w  # noqa: E731  (signed codes: a signed table)
    signed = mx.from_function(truncating, name="trunc_s", signed=True)
    x = np.random.default_rng(6).normal(size=(8, 12, 12, 4)).astype(np.float32)
    for kwargs in (dict(mul_map_file=signed), dict(mul_map_file="drum4", weight_quantization="per_channel")):
        with tf.device("/GPU:0"):
            layer = ta.FakeApproxConv2D(8, 3, padding="same", **kwargs)
            gpu = layer(x, training=False).numpy()
        with tf.device("/CPU:0"):
            cpu = layer(x, training=False).numpy()
        cases += 1
        if not np.array_equal(gpu.view(np.uint32), cpu.view(np.uint32)):
            mismatches += 1
            print("  Keras layer differs on the GPU:", "signed" if layer.signed_products else "per-channel")
    return cases, mismatches


def check_keras(tables):
    import keras

    inputs = keras.Input((16, 16, 3))
    h = ta.FakeApproxConv2D(16, 3, padding="same", activation="relu", mul_map_file=tables[0][1],
                            weight_quantization="per_channel")(inputs)
    h = ta.FakeApproxDepthwiseConv2D(3, padding="same", mul_map_file=tables[1][1])(h)
    h = keras.layers.Flatten()(h)
    outputs = ta.FakeApproxDense(10, mul_map_file=tables[2][1])(h)
    x = np.random.default_rng(5).uniform(size=(64, 16, 16, 3)).astype(np.float32)
    with tf.device("/GPU:0"):
        model = keras.Model(inputs, outputs)
    on_host = all("CPU" in layer.lut.value.device for layer in model.layers if hasattr(layer, "lut"))
    traces = []

    @tf.function
    def forward(v):
        traces.append(1)
        return model(v, training=False)

    same = True
    for name, path, lut in tables[:4]:
        for layer in model.layers:
            if hasattr(layer, "set_multiplier"):
                layer.set_multiplier(lut)
        with tf.device("/GPU:0"):
            gpu = forward(x).numpy()
            gpu_predict = model.predict(x, batch_size=len(x), verbose=0)  # one batch: same batch ranges
        with tf.device("/CPU:0"):
            cpu = model(x, training=False).numpy()
        same &= np.array_equal(gpu, cpu) and np.array_equal(gpu_predict, cpu)
        if not np.array_equal(gpu, cpu):
            print("  keras", name, "max |gpu - cpu|", float(np.abs(gpu - cpu).max()), "differing",
                  int((gpu != cpu).sum()), "of", gpu.size, "predict==call", np.array_equal(gpu, gpu_predict))
            probe = x[:4]
            for layer in model.layers[1:]:
                outs = {}
                for device in ("/CPU:0", "/GPU:0"):
                    with tf.device(device):
                        outs[device] = layer(probe, training=False).numpy()
                        if hasattr(layer, "lut"):
                            lo, hi = float(min(probe.min(), 0)), float(max(probe.max(), 0))
                            fq = tf.quantization.fake_quant_with_min_max_vars(tf.constant(probe), lo, hi).numpy()
                            outs[device + "fq"] = fq
                print("   ", layer.name, "layer equal:", np.array_equal(outs["/CPU:0"], outs["/GPU:0"]),
                      "fake-quant equal:", np.array_equal(outs.get("/CPU:0fq"), outs.get("/GPU:0fq")))
                probe = outs["/CPU:0"]
    return same, on_host, len(traces)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not tf.config.list_physical_devices("GPU"):
        print("tf_gpu_check: no GPU visible to TensorFlow")
        return 2
    rng = np.random.default_rng(args.seed)
    folder = tempfile.mkdtemp()
    # Read once, at the op's first call: which kernel ran, per configuration (check_decomposed reads it).
    trace_path = os.environ.setdefault("TFAPPROX_TRACE", os.path.join(folder, "trace.tsv"))
    tables = []
    for name in ("exact", "drum4", "optrunc3", "mitchell", "etm3", "bam_h1_v6"):
        m = mx.get(name)
        tables.append((name, m.save(os.path.join(folder, name + ".bin")), np.asarray(m.lut, np.uint16)))
    failures, outputs, nans, cases = 0, 0, 0, 0
    for i in range(args.cases):
        c = random_case(rng)
        ok, name, n, n_nan = run_case(c, rng, tables, nan=i % 5 == 4)
        cases += 1
        outputs += n
        nans += n_nan
        if not ok:
            failures += 1
            print("MISMATCH", name, c)
    invalid_ok = check_invalid_table()
    ranges_ok = check_invalid_ranges()
    keras_same, lut_on_host, traces = check_keras(tables)
    decomposed = check_decomposed(rng, trace_path)
    # The wheel's sm_90a device code (the decomposed GEMM's wgmma tiles) runs on compute capability 9.0 only.
    details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
    hopper = tuple(details.get("compute_capability", (0, 0))) == (9, 0)
    gradient_error = check_table_gradient(rng)
    range_cases, range_mismatches = check_ranges(rng)
    batch_cases, batch_mismatches = check_batch_ranges(rng)
    print(f"| check | result |\n| --- | --- |")
    print(f"| random op cases x 4 table forms (file eager/graph, uint16, float32), then a random scheme, "
          f"int16/uint16 table and per-tensor/per-channel filter ranges reduced on each device | {cases} cases, {outputs} outputs "
          f"({nans} NaN), {failures} mismatches |")
    print(f"| invalid float32 table | an error naming the entry on GPU and CPU: {invalid_ok} |")
    print(f"| registered decompositions (<= 16 terms) on big layers, GPU vs CPU | {decomposed[0]} cases, "
          f"{decomposed[1]} outputs, {decomposed[2]} mismatches; tensor-core kernel traced for {decomposed[3]} "
          f"GPU configurations, {decomposed[4]} of them with a wgmma tile (sm_90a; expected on compute "
          f"capability 9.0: {hopper}; {decomposed[8]} of them loaded by TMA), {decomposed[5]} with the halo tile "
          f"({decomposed[7]} of them beside the "
          f"pre-pass, {decomposed[10]} of those with streaming hints), "
          f"{decomposed[9]} with a pointwise tile, {decomposed[6]} with a tuned plan |")
    print(f"| refused ranges (reversed, zero width, inf, NaN) | GPU all NaN and CPU error: {ranges_ok} |")
    print(f"| Keras predict GPU == CPU over 4 set_multiplier swaps (first layer per-channel) | {keras_same} |")
    print(f"| layer tables are host variables | {lut_on_host} |")
    print(f"| tf.function traces over 4 swaps | {traces} |")
    print(f"| range_with_zero GPU vs CPU (the layers' batch ranges; special values, per channel) | {range_cases} "
          f"cases, {range_mismatches} mismatches |")
    print(f"| approx_conv2d_with_batch_ranges GPU vs CPU (output and ranges; NaN/inf: GPU all NaN, CPU error), "
          f"then a signed and a per-channel Keras layer | {batch_cases} cases, {batch_mismatches} mismatches |")
    print(f"| table gradient GPU vs CPU, 12 random cases (schemes, per-channel, int16) | largest difference "
          f"{gradient_error:.1e} of the gradient's largest magnitude |")
    return 0 if (failures == 0 and invalid_ok and ranges_ok and keras_same and lut_on_host and traces == 1
                 and gradient_error < 1e-4 and decomposed[2] == 0 and decomposed[3] > 0
                 and (decomposed[4] > 0 or not hopper) and range_mismatches == 0
                 and batch_mismatches == 0) else 1


if __name__ == "__main__":
    sys.exit(main())
