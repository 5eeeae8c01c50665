"""Keras 3 layers whose multiplications go through an approximate 8-bit multiplier.

`FakeApproxConv2D`, `FakeApproxDepthwiseConv2D` and `FakeApproxDense` are drop-in replacements of
keras `Conv2D`, `DepthwiseConv2D` and `Dense` (same arguments, same weights, same outputs shape).
Each one fake-quantizes its input and its kernel to `num_bits`-bit codes, exactly as
`tf.quantization.fake_quant_with_min_max_vars` (narrow_range=False), and computes the layer with
the op ApproxConv2DWithMinMaxVars, which takes every product of codes from the table
`mul_map_file` ("" = the exact product). Bias and activation are then applied in float, as in the
accurate layer.

Quantization ranges
-------------------
The kernel range is always the kernel's own min/max (it is known, and "last value" ranges are what
quantization-aware training uses for weights), for the whole kernel or, with
weight_quantization="per_channel", per output channel. The input range depends on `range_mode`:

- "batch" (default, the seed's behaviour): min/max of each batch.
- "moving_average": an exponential moving average (decay `ema_decay`) of the batch ranges, updated
  only when the layer is called with training=True, as quantization-aware training does; until the
  first update (or a `calibrate` pass) the batch range is used.
- "fixed": ranges frozen by `tensorflow_approx.calibrate(model, data)`; calling the layer before
  calibration is an error.

Every range is widened to include 0 (min <= 0 <= max). TensorFlow's fake quantization nudges a
range so that real 0 is a code; for a range that does not contain 0 the nudge slides the whole grid
(e.g. data in [0.5, 1] would be quantized on [0, 0.5] and collapse to 0.5), so like TF's own
quantization-aware training we include 0 first. For ranges that already contain 0 (ReLU outputs,
images in [0, 1], kernels) this is the raw min/max of the data, as in the seed.

Gradients are straight-through by default: in training calls (training=True, as Keras' fit makes
them) input and kernel pass through tf.quantization.fake_quant_with_min_max_vars (gradient 1 inside
the range, 0 outside) and the op's gradient is the accurate convolution's at the fake-quantized
values; gradient="table" takes the derivatives of the multiplier's table there instead
(tensorflow_approx/python/ops/table_gradient.py). Ranges
get no gradient. Other calls are inference: the op gets the raw operands and quantizes them itself
(same codes, no second pass), so a custom training loop must pass training=True to get the
clipping of fake quantization in its gradients.

Schemes: a layer's codes follow its table's signedness unless told otherwise. Unsigned products
(uint16): TensorFlow's asymmetric codes 0..2^b - 1. Signed products (int16, e.g. a signed Multiplier):
symmetric codes -2^(b-1)..2^(b-1) - 1 with zero point 0, the table indexed by their bytes.
`input_scheme` / `weight_scheme` choose per operand (e.g. unsigned activations x signed weights), and
`weight_bits` gives the kernel its own code width (docs/semantics.md, "Quantization schemes").

Tables: each layer holds its multiplier's 65536 products as a non-trainable float32 weight `lut`
(exact integers; float32, the dtype it kept when it moved from the GPU to the host, where the op's GPU
kernel takes it) and runs the op
ApproxConv2DWithTable on it. `.keras` files and SavedModels therefore carry their tables, and
`layer.set_multiplier(m)` changes a built, compiled model's table in place without retracing.

Dtypes: ranges and codes are float32 whatever the policy (TensorFlow's FakeQuant works in float32
and the op's contract computes codes in float32). The op runs in float64 under a float64 policy and
in float32 otherwise (also under mixed_float16 / mixed_bfloat16: half-precision inputs are cast up,
the op's float32 result is cast back to the compute dtype before bias and activation).

XLA: the op has no XLA kernel, so every layer sets `supports_jit = False`; Keras 3 then compiles
`fit`/`evaluate`/`predict` without XLA (`jit_compile="auto"` resolves to False and an explicit
`jit_compile=True` falls back to False with a warning).
"""

import keras
import numpy as np
import tensorflow as tf

from tensorflow_approx.python.ops.approx_conv_ops import (
    GRADIENTS,
    LUT_ENTRIES,
    SCHEMES,
    approx_conv2d_with_batch_ranges,
    approx_conv2d_with_table,
    lut_values,
    range_with_zero,
    register_decomposition,
)
from tensorflow_approx.python.ops.table_gradient import scheme_range

RANGE_MODES = ("batch", "moving_average", "fixed")
WEIGHT_QUANTIZATIONS = ("per_tensor", "per_channel")

__all__ = [
    "RANGE_MODES",
    "WEIGHT_QUANTIZATIONS",
    "FakeApproxConv2D",
    "FakeApproxDense",
    "FakeApproxDepthwiseConv2D",
    "approx_layers",
]


def _check_approx_args(num_bits, range_mode, ema_decay, weight_bits=None, weight_quantization="per_tensor",
                       input_scheme=None, weight_scheme=None, gradient="ste"):
    for name, bits in (("num_bits", num_bits), ("weight_bits", num_bits if weight_bits is None else weight_bits)):
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ValueError(f"{name} must be an integer in 2..8, got {bits!r}")
    if range_mode not in RANGE_MODES:
        raise ValueError(f"range_mode must be one of {RANGE_MODES}, got {range_mode!r}")
    if not 0.0 < ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in (0, 1), got {ema_decay!r}")
    if weight_quantization not in WEIGHT_QUANTIZATIONS:
        raise ValueError(f"weight_quantization must be one of {WEIGHT_QUANTIZATIONS}, got {weight_quantization!r}")
    if gradient not in GRADIENTS:
        raise ValueError(f"gradient must be one of {GRADIENTS}, got {gradient!r}")
    for name, scheme in (("input_scheme", input_scheme), ("weight_scheme", weight_scheme)):
        if scheme is not None and scheme not in SCHEMES:
            raise ValueError(f"{name} must be None (from the table's signedness) or one of {SCHEMES}, got {scheme!r}")


def _register(values):
    """Registers a layer's table decomposition for the CPU and GPU kernels (register_decomposition, its
    default budget of terms), outside any graph being traced."""
    with tf.init_scope():
        register_decomposition(values)


def _layer_lut(table, name):
    """(values, label, signed) of a layer's table: lut_values, uint16 or int16 (signed products)."""
    values, label = lut_values(table, name)
    return values, label, values.dtype == np.int16


def approx_layers(model):
    """All approximate layers inside `model` (any depth of nesting), in Keras' traversal order."""
    # _flatten_layers is Keras' own recursive traversal (the trainer uses it to check supports_jit).
    return [
        layer
        for layer in model._flatten_layers(include_self=True, recursive=True)
        if isinstance(layer, _FakeApproxMixin)
    ]


class _FakeApproxMixin:
    """What the three layers share: arguments, range state, quantization, the op call, saving.

    Placed before the keras layer in the bases, so its methods override the keras ones.
    """

    def __init__(
        self,
        *args,
        num_bits=8,
        mul_map_file="",
        range_mode="batch",
        ema_decay=0.999,
        weight_bits=None,
        weight_quantization="per_tensor",
        input_scheme=None,
        weight_scheme=None,
        gradient="ste",
        table_in_weights=False,
        signed_products=False,
        **kwargs,
    ):
        _check_approx_args(num_bits, range_mode, ema_decay, weight_bits, weight_quantization, input_scheme,
                           weight_scheme, gradient)
        if table_in_weights:
            # Loading a saved layer: its table comes with its weights (the file may be long gone).
            if not isinstance(mul_map_file, str):
                raise TypeError(f"mul_map_file of a saved layer is a label, got {mul_map_file!r}")
            self._initial_lut, label, signed = None, mul_map_file, bool(signed_products)
        else:
            self._initial_lut, label, signed = _layer_lut(mul_map_file, "mul_map_file")
        # LoRA and Keras' own int8/float8 quantization replace the kernel path we rely on.
        if kwargs.pop("lora_rank", None) is not None or kwargs.pop("lora_alpha", None) is not None:
            raise ValueError(f"{type(self).__name__} does not support LoRA (lora_rank)")
        if kwargs.pop("quantization_config", None) is not None:
            raise ValueError(f"{type(self).__name__} does not take a Keras quantization_config")
        super().__init__(*args, **kwargs)  # the keras layer that follows this mixin in the bases
        self.num_bits = num_bits
        self.weight_bits = num_bits if weight_bits is None else weight_bits
        self.weight_quantization = weight_quantization
        self.gradient = gradient
        # A signed multiplier (int16 products of signed codes) quantizes symmetrically by default:
        # codes -2^(b-1)..2^(b-1) - 1 with zero point 0, indexing the table by their bytes.
        self.signed_products = signed
        default_scheme = "symmetric" if signed else "asymmetric"
        self.input_scheme = input_scheme or default_scheme
        self.weight_scheme = weight_scheme or default_scheme
        # Provenance only (a path, a Multiplier's name or "array"): the table itself is the weight
        # `lut`, saved with the model.
        self.mul_map_file = label
        self.range_mode = range_mode
        self.ema_decay = float(ema_decay)
        # Set by calibration.calibrate() around its pass over the data (a Python flag, read when
        # the call is traced, so calibrate traces its own function).
        self._calibrating = False
        # Whether the input range is known to be recorded (set by calibrate() and by loading a recorded
        # one): until then every "fixed" call checks range_ready in the graph, and every "moving_average"
        # inference call reduces the batch's range in case it is not.
        self._range_known = False
        self.supports_jit = False  # the op has no XLA kernel

    def build(self, input_shape):
        super().build(input_shape)
        self._build_ranges()
        # A layer being loaded has no initial table: its table arrives in load_own_variables.
        loading = self._initial_lut is None
        initial = lut_values("")[0] if loading else self._initial_lut
        # On the host, where the op's GPU kernel takes the table (it checks it there, finds its registered
        # decomposition and copies it to the device with the call's work; a table on the GPU would be
        # copied back at every call, a wait for the device). float32 (the dtype it had when it lived on
        # the GPU; saved models keep it): its entries are exact integers (signed products too,
        # -32768..32767, made int16 at each call).
        with tf.device("/CPU:0"):
            self.lut = self.add_weight(
                name="lut",
                shape=(LUT_ENTRIES,),
                initializer=lambda shape, dtype: tf.constant(initial, dtype=tf.float32),
                dtype="float32",
                trainable=False,
                autocast=False,
            )
        self._initial_lut = None
        if not loading:
            _register(initial)

    def set_multiplier(self, multiplier):
        """Replaces the table of this (built) layer in place: the next call uses it.

        Compiled functions (predict, fit, a tf.function) keep working without retracing, since the
        table is a variable they read at every call.

        Args:
          multiplier: a tensorflow_approx.multipliers.Multiplier, a path ("" = exact; a .bin, .npy or
            .c file, or a family name such as "drum6"), or an array of 65536 (or 256 x 256) products.
        """
        values, label, signed = _layer_lut(multiplier, "multiplier")
        if signed != self.signed_products:
            kinds = {True: "signed", False: "unsigned"}
            raise ValueError(
                f"layer '{self.name}' computes with {kinds[self.signed_products]} products and its quantization "
                f"schemes follow; {label!r} holds {kinds[signed]} ones: make a layer for it (the constructor "
                "or approximate_model)")
        if not self.built:
            self._initial_lut = values
        else:
            self.lut.assign(values.astype(np.float32))
            _register(values)
        self.mul_map_file = label

    def get_config(self):
        return {
            **super().get_config(),
            "num_bits": self.num_bits,
            "mul_map_file": self.mul_map_file,
            "range_mode": self.range_mode,
            "ema_decay": self.ema_decay,
            "weight_bits": self.weight_bits,
            "weight_quantization": self.weight_quantization,
            "input_scheme": self.input_scheme,
            "weight_scheme": self.weight_scheme,
            "gradient": self.gradient,
            "signed_products": self.signed_products,
            "table_in_weights": True,
        }

    # -- state ---------------------------------------------------------------------------------

    def _build_ranges(self):
        """Input range variables for "moving_average" and "fixed" (none for "batch")."""
        if self.range_mode == "batch":
            self.input_min = self.input_max = self.range_ready = None
            return

        def scalar(name):
            return self.add_weight(
                name=name,
                shape=(),
                initializer="zeros",
                dtype="float32",
                trainable=False,
                autocast=False,  # ranges stay float32 under mixed precision
            )

        self.input_min = scalar("input_min")
        self.input_max = scalar("input_max")
        # 1.0 once a range has been recorded. On the host, where the Assert of "fixed" mode reads it
        # (until the range is known to be recorded: _range_known), rather than copied there from the GPU.
        with tf.device("/CPU:0"):
            self.range_ready = scalar("range_ready")

    def _range_variables(self):
        return [] if self.input_min is None else [self.input_min, self.input_max, self.range_ready]

    def _accurate_variables(self):
        """The variables of the accurate keras layer, in its saving order: kernel[, bias]."""
        variables = [self._kernel_variable()]
        if self.use_bias:
            variables.append(self.bias)
        return variables

    def _saved_variables(self):
        """kernel[, bias] (the accurate layer's order), the input range state, then the table."""
        return self._accurate_variables() + self._range_variables() + [self.lut]

    def save_own_variables(self, store):
        if not self.built:
            return
        for i, variable in enumerate(self._saved_variables()):
            store[str(i)] = variable

    def load_own_variables(self, store):
        if not self.built:
            return super().load_own_variables(store)  # keras' own "never built" error
        variables = self._saved_variables()
        if len(store.keys()) == len(variables) - 1:
            # Saved before layers held their table: it came from mul_map_file, read at construction.
            variables = variables[:-1]
        elif len(store.keys()) != len(variables):
            raise ValueError(
                f"Layer '{self.name}' expected {len(variables)} variables (kernel, bias when used, "
                f"the input range state, the table), but the file has {len(store.keys())}"
            )
        values = None
        if variables[-1] is self.lut:
            lut = np.asarray(store[str(len(variables) - 1)])
            name = f"the table saved for layer '{self.name}'"
            values, _, signed = _layer_lut(lut, name)  # checks it, names the layer
            if signed and not self.signed_products:
                raise ValueError(f"{name} holds signed products, but the layer's config says unsigned")
            if self.signed_products:
                if values.max() > 32767:
                    raise ValueError(
                        f"{name} has entries above 32767, but the layer's config says signed products "
                        "(-32768..32767)")
                values = values.astype(np.int16)  # as the op reads the table of a signed layer
        for i, variable in enumerate(variables):
            variable.assign(store[str(i)])
        if self.range_ready is not None:
            self._range_known = bool(self.range_ready.numpy() > 0.5)
        if values is not None:
            _register(values)

    def copy_accurate_weights(self, layer):
        """Assigns kernel and bias of a built accurate keras layer of the same configuration.

        The way to evaluate an accurately trained layer approximately: Keras 3 weight files are
        keyed by layer class, so the accurate model's file does not load into approximate layers
        (load it into the accurate model, then copy, or use approximate_model).
        """
        source = [layer.kernel] + ([layer.bias] if layer.use_bias else [])
        for target, value in zip(self._accurate_variables(), source, strict=True):
            target.assign(value)

    def enable_lora(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not support LoRA")

    def quantize(self, *args, **kwargs):
        raise NotImplementedError(
            f"{type(self).__name__} is already quantized by its approximate multiplier"
        )

    # -- the computation -----------------------------------------------------------------------

    def _input_range(self, x, training):
        """float32 (min, max) of the input for this call, updating the range state when due."""
        if self._range_known and not self._calibrating and (self.range_mode == "fixed" or not training):
            # Recorded by calibrate() or loaded, and not updated by this call: no pass over the input, and
            # no check per call ("fixed" checked range_ready with an Assert, a host op that cost some
            # 0.16 ms per layer and call on the GPU; "moving_average" inference reduced the batch's range
            # only for a tf.where to drop it).
            return self.input_min, self.input_max
        if self.range_mode == "fixed" and not self._calibrating:
            # The calibrated range, not known to be recorded: checked at every call.
            check = tf.debugging.assert_greater(
                self.range_ready,
                0.5,
                message=(
                    f"layer '{self.name}' has range_mode='fixed' but no range: run "
                    "tensorflow_approx.calibrate(model, data) before using it"
                ),
            )
            with tf.control_dependencies([check]):
                return tf.identity(self.input_min), tf.identity(self.input_max)
        batch_min, batch_max = range_with_zero(x)  # one op, no gradient
        if self.range_mode == "batch":
            return batch_min, batch_max
        ready = self.range_ready > 0.5
        if self._calibrating:
            # The union of all calibration batches; this call itself uses its batch range.
            self.input_min.assign(tf.where(ready, tf.minimum(self.input_min, batch_min), batch_min))
            self.input_max.assign(tf.where(ready, tf.maximum(self.input_max, batch_max), batch_max))
            self.range_ready.assign(1.0)
            return batch_min, batch_max
        # moving_average
        if training:
            decay = self.ema_decay
            new_min = tf.where(ready, decay * self.input_min + (1 - decay) * batch_min, batch_min)
            new_max = tf.where(ready, decay * self.input_max + (1 - decay) * batch_max, batch_max)
            self.input_min.assign(new_min)
            self.input_max.assign(new_max)
            self.range_ready.assign(1.0)
            return new_min, new_max
        return (
            tf.where(ready, self.input_min, batch_min),
            tf.where(ready, self.input_max, batch_max),
        )

    def _op_dtype(self):
        return tf.float64 if self.compute_dtype == "float64" else tf.float32

    def _fake_quant_operands(self, inputs, kernel, training):
        """(input, kernel) for the op in its dtype, and the 4 ranges: scalars, the kernel's per output
        channel with weight_quantization="per_channel". `kernel` is the op's filter, [h, w, in, out].

        Training calls fake-quantize both first: the op's gradient (straight-through or the table's,
        by `gradient`) is taken at the fake-quantized operands, and fake quantization's own gradient
        is what zeroes it outside the range. Other calls (inference:
        predict, evaluate, training=None or False) pass the raw operands: the op quantizes them to
        the very codes fake quantization would give, so a second quantization pass would be wasted.
        A symmetric operand is fake-quantized on the range whose codes are its signed codes shifted.
        Inference in range_mode "batch" (float32) returns None for the ranges: the op computes them
        itself (ApproxConv2DWithBatchRanges, the same bits as range_with_zero), one op per layer
        instead of three.
        """
        x = tf.cast(inputs, tf.float32)
        k = tf.cast(kernel, tf.float32)
        if not training and self.range_mode == "batch" and self._op_dtype() == tf.float32:
            return x, k, None
        x_min, x_max = self._input_range(x, training)
        per_channel = self.weight_quantization == "per_channel"
        k_min, k_max = range_with_zero(k, per_channel=per_channel)
        if training:
            x_lo, x_hi, x_narrow = scheme_range(x_min, x_max, self.num_bits, self.input_scheme)
            k_lo, k_hi, k_narrow = scheme_range(k_min, k_max, self.weight_bits, self.weight_scheme)
            x = tf.quantization.fake_quant_with_min_max_vars(x, x_lo, x_hi, num_bits=self.num_bits,
                                                             narrow_range=x_narrow)
            fq_kernel = (tf.quantization.fake_quant_with_min_max_vars_per_channel if per_channel
                         else tf.quantization.fake_quant_with_min_max_vars)
            k = fq_kernel(k, k_lo, k_hi, num_bits=self.weight_bits, narrow_range=k_narrow)
        dtype = self._op_dtype()
        ranges = [tf.cast(r, dtype) for r in (x_min, x_max, k_min, k_max)]
        return tf.cast(x, dtype), tf.cast(k, dtype), ranges

    def _approx_conv(self, xq, kq, ranges, strides, dilations, data_format, padding):
        """The op on the operands (fake-quantized or raw: it quantizes them to the same codes), with the
        given ranges, or with the ranges it computes itself where `ranges` is None."""
        table = self.lut.value
        if self.signed_products:
            with tf.device("/CPU:0"):  # stays on the host (the variable's place), where the op takes it
                table = tf.cast(table, tf.int16)  # the op reads an int16 table as signed products
        args = dict(
            table=table,
            strides=strides,
            num_bits=self.num_bits,
            filter_num_bits=self.weight_bits,
            input_scheme=self.input_scheme,
            filter_scheme=self.weight_scheme,
            gradient=self.gradient,
            padding=padding,
            data_format=data_format,
            dilations=dilations,
        )
        if ranges is None:
            per_channel = self.weight_quantization == "per_channel"
            return approx_conv2d_with_batch_ranges(xq, kq, filter_per_channel=per_channel, **args)[0]
        return approx_conv2d_with_table(xq, kq, *ranges, **args)

    def _bias_and_activation(self, outputs, channels_first=False):
        outputs = tf.cast(outputs, self.compute_dtype)
        if self.use_bias:
            bias = self.bias
            if channels_first:
                bias = tf.reshape(bias, [-1, 1, 1])
            outputs = outputs + tf.cast(bias, outputs.dtype)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs


def _conv_geometry(layer):
    """(strides, dilations, data_format, padding) of a keras 2-D conv layer, in the op's terms."""
    if layer.data_format == "channels_first":
        return ([1, 1, *layer.strides], [1, 1, *layer.dilation_rate], "NCHW", layer.padding.upper())
    return [1, *layer.strides, 1], [1, *layer.dilation_rate, 1], "NHWC", layer.padding.upper()


@keras.saving.register_keras_serializable(package="tensorflow_approx")
class FakeApproxConv2D(_FakeApproxMixin, keras.layers.Conv2D):
    """keras.layers.Conv2D computed with an approximate multiplier.

    Takes every argument of keras.layers.Conv2D (filters, kernel_size, strides, padding
    "valid"/"same", data_format, dilation_rate, groups, activation, use_bias, initializers,
    regularizers, constraints) plus:

    Args:
      num_bits: code width of input and kernel, 2..8.
      mul_map_file: the multiplier: "" for the exact product, a path (a 131072-byte table of 65536
        little-endian uint16, entry (a << 8) | w the product of activation code a and weight code
        w; or a .npy / EvoApprox .c file), a family name ("drum6"), a
        tensorflow_approx.multipliers.Multiplier, or an array of 65536 products. The table is read
        once and kept in the layer (the non-trainable weight `lut`), so saved models need no file;
        the attribute keeps the path or name for provenance. `set_multiplier` swaps it.
      range_mode: "batch", "moving_average" or "fixed" (module docstring).
      ema_decay: decay of the "moving_average" ranges.
      weight_bits: the kernel's code width, 2..8 (None: num_bits), e.g. 8x4 multipliers.
      weight_quantization: "per_tensor" (one kernel range) or "per_channel" (a range per output
        channel, as fake_quant_with_min_max_vars_per_channel).
      input_scheme, weight_scheme: None (from the table: "symmetric" for signed products, signed codes
        with zero point 0; "asymmetric" for unsigned ones, TensorFlow's codes) or one explicitly
        ("symmetric_narrow": symmetric without the lowest code, as TensorFlow's narrow_range),
        e.g. unsigned activations with signed weights.
      gradient: "ste" (straight-through: the accurate layer's gradient at the fake-quantized values)
        or "table" (the derivatives of the multiplier's table; tensorflow_approx/python/ops/
        table_gradient.py says how, and what it costs).

    Input: [batch, height, width, channels] (channels_last) or [batch, channels, height, width],
    any float dtype policy. Output: as keras Conv2D, in the layer's compute dtype. Kernel:
    [kh, kw, channels / groups, filters], the same variable as Conv2D's, so weights of an accurate
    Conv2D load unchanged.

    Example:
      >>> layer = FakeApproxConv2D(16, 3, padding="same", activation="relu",
      ...                          mul_map_file="mul8u_L40.bin")
      >>> y = layer(tf.random.uniform([8, 28, 28, 1]))   # [8, 28, 28, 16] float32
    """

    def _kernel_variable(self):
        return self._kernel

    def call(self, inputs, training=None):
        xq, kq, ranges = self._fake_quant_operands(inputs, self.kernel, training)
        outputs = self._approx_conv(xq, kq, ranges, *_conv_geometry(self))
        return self._bias_and_activation(outputs, self.data_format == "channels_first")


@keras.saving.register_keras_serializable(package="tensorflow_approx")
class FakeApproxDepthwiseConv2D(_FakeApproxMixin, keras.layers.DepthwiseConv2D):
    """keras.layers.DepthwiseConv2D computed with an approximate multiplier.

    Takes every argument of keras.layers.DepthwiseConv2D (kernel_size, strides, padding,
    depth_multiplier, data_format, dilation_rate, activation, use_bias, depthwise_initializer /
    regularizer / constraint, bias_*) plus num_bits, mul_map_file, range_mode, ema_decay and the quantization scheme arguments as
    FakeApproxConv2D.

    Input: [batch, height, width, channels] (or channels_first). Output: channels * multiplier
    channels, output channel c * multiplier + j from input channel c, as keras. Kernel:
    [kh, kw, channels, multiplier] (keras' variable), given to the op as the grouped filter
    [kh, kw, 1, channels * multiplier], whose flattening order is that same c * multiplier + j.

    Example:
      >>> layer = FakeApproxDepthwiseConv2D(3, depth_multiplier=2, mul_map_file="")
      >>> y = layer(tf.random.uniform([4, 16, 16, 8]))   # [4, 14, 14, 16]
    """

    def _kernel_variable(self):
        return self.kernel

    def call(self, inputs, training=None):
        kh, kw, channels, multiplier = self.kernel.shape
        filters = tf.reshape(self.kernel, [kh, kw, 1, channels * multiplier])
        xq, kq, ranges = self._fake_quant_operands(inputs, filters, training)
        outputs = self._approx_conv(xq, kq, ranges, *_conv_geometry(self))
        return self._bias_and_activation(outputs, self.data_format == "channels_first")


@keras.saving.register_keras_serializable(package="tensorflow_approx")
class FakeApproxDense(_FakeApproxMixin, keras.layers.Dense):
    """keras.layers.Dense computed with an approximate multiplier.

    Takes every argument of keras.layers.Dense (units, activation, use_bias, initializers,
    regularizers, constraints) plus num_bits, mul_map_file, range_mode, ema_decay and the quantization scheme arguments as
    FakeApproxConv2D. The product is the op on a 1x1 problem: the input [..., in] is seen as
    [N, 1, 1, in] images and the kernel [in, units] as a 1x1 filter.

    Input: any rank >= 2, [..., in]. Output: [..., units] in the compute dtype.

    Example:
      >>> layer = FakeApproxDense(10, activation="softmax", mul_map_file="mul8u_L40.bin")
      >>> y = layer(tf.random.uniform([32, 84]))   # [32, 10]
    """

    def _kernel_variable(self):
        return self._kernel

    def call(self, inputs, training=None):
        depth = self.kernel.shape[0]
        filters = tf.reshape(self.kernel, [1, 1, depth, self.units])
        xq, kq, ranges = self._fake_quant_operands(inputs, filters, training)
        images = tf.reshape(xq, [-1, 1, 1, depth])
        outputs = self._approx_conv(
            images, kq, ranges, [1, 1, 1, 1], [1, 1, 1, 1], "NHWC", "VALID"
        )
        outputs = tf.reshape(outputs, tf.concat([tf.shape(inputs)[:-1], [self.units]], axis=0))
        outputs = tf.ensure_shape(outputs, [*inputs.shape[:-1], self.units])
        return self._bias_and_activation(outputs)
