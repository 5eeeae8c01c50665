"""approximate_model: copies a Keras model with Conv2D / DepthwiseConv2D / Dense approximate."""

import keras

from tensorflow_approx.python.keras.layers import (
    FakeApproxConv2D,
    FakeApproxDense,
    FakeApproxDepthwiseConv2D,
    _check_approx_args,
)
from tensorflow_approx.python.ops.approx_conv_ops import lut_values

# Exact types only: subclasses of these (our own layers included) may compute something else.
LAYER_MAP = {
    keras.layers.Conv2D: FakeApproxConv2D,
    keras.layers.DepthwiseConv2D: FakeApproxDepthwiseConv2D,
    keras.layers.Dense: FakeApproxDense,
}


def _convertible_names(model):
    return [
        layer.name
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if type(layer) in LAYER_MAP
    ]


def _tables_by_name(model, mul_map_file, layers):
    """{layer name: table} of the layers to convert, after checking every name and table."""
    names = _convertible_names(model)
    if isinstance(mul_map_file, dict):
        if layers is not None:
            raise ValueError(
                "approximate_model: give either a dict mul_map_file or layers, not both"
            )
        tables = dict(mul_map_file)
    else:
        selected = names if layers is None else list(layers)
        tables = {name: mul_map_file for name in selected}
    unknown = sorted(set(tables) - set(names))
    if unknown:
        raise ValueError(
            f"approximate_model: {unknown} are not Conv2D / DepthwiseConv2D / Dense layers of the "
            f"model; those are {names}"
        )
    return tables


def approximate_model(
    model, mul_map_file="", num_bits=8, layers=None, range_mode="batch", ema_decay=0.999, weight_bits=None,
    weight_quantization="per_tensor", input_scheme=None, weight_scheme=None, gradient="ste"
):
    """Copies a functional or Sequential model with approximate layers, weights included.

    Every keras Conv2D, DepthwiseConv2D and Dense selected (at any depth of nested models) becomes
    FakeApproxConv2D, FakeApproxDepthwiseConv2D or FakeApproxDense with the same configuration and
    weights; the other layers are copied with their weights. The input model is not modified, and
    the copy is not compiled (compile it as you would the original).

    Args:
      model: a built functional or Sequential keras.Model.
      mul_map_file: the table for every selected layer: "" (exact product), a path, a family name,
        a Multiplier or an array of 65536 products (see FakeApproxConv2D); or a dict {layer name:
        table}: then exactly the named layers are converted, each with its
        own table, and the others stay accurate.
      num_bits: code width, 2..8.
      layers: None (all Conv2D / DepthwiseConv2D / Dense) or the names of the layers to convert
        (only with a string mul_map_file).
      range_mode, ema_decay: as the layers; with "fixed", run calibrate() on the copy before use.
      weight_bits, weight_quantization, input_scheme, weight_scheme, gradient: as the layers (schemes
        follow each table's signedness unless given).

    Returns:
      The new keras.Model.

    Raises:
      ValueError: a name that is not a convertible layer of the model, a bad table, num_bits or
        range_mode (checked before anything is built).

    Example:
      >>> approx = approximate_model(model, mul_map_file={"conv1": "mul8u_L40.bin",
      ...                                                  "conv2": "mul8u_125K.bin"})
      >>> approx.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
      >>> approx.evaluate(x_test, y_test)
    """
    if not isinstance(mul_map_file, dict) and isinstance(layers, str):
        raise TypeError(f"approximate_model: layers must be a list of names, got {layers!r}")
    tables = _tables_by_name(model, mul_map_file, layers)
    scheme_args = dict(weight_bits=weight_bits, weight_quantization=weight_quantization,
                       input_scheme=input_scheme, weight_scheme=weight_scheme, gradient=gradient)
    _check_approx_args(num_bits, range_mode, ema_decay, **scheme_args)
    # Each distinct table read and checked once (arrays are not hashable: keyed by identity).
    checked = {}
    for table in tables.values():
        if id(table) not in checked:
            checked[id(table)] = lut_values(table, "mul_map_file")
    pairs = []

    def clone(layer):
        config = layer.get_config()
        if type(layer) in LAYER_MAP and layer.name in tables:
            new = LAYER_MAP[type(layer)].from_config(
                {
                    **config,
                    "num_bits": num_bits,
                    "mul_map_file": checked[id(tables[layer.name])][0],
                    "range_mode": range_mode,
                    "ema_decay": ema_decay,
                    **scheme_args,
                }
            )
        else:
            new = layer.__class__.from_config(config)
        pairs.append((layer, new))
        return new

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    # clone_model built every new layer by calling it; now the weights can be copied.
    for old, new in pairs:
        if hasattr(new, "copy_accurate_weights"):
            new.copy_accurate_weights(old)
            new.mul_map_file = checked[id(tables[old.name])][1]  # provenance: the path or name
        else:
            new.set_weights(old.get_weights())
    return copy
