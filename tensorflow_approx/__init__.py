"""tensorflow_approx: convolutions with approximate 8-bit multipliers for TensorFlow.

The ops ApproxConv2DWithMinMaxVars, ApproxConv2DWithTable and ApproxConv2DWithBatchRanges (the latter
with its ranges computed inside) fake-quantize input and filter to 8-bit codes, take each product
from a 256 x 256 table (an approximate multiplier) and sum the products exactly in integers.

`import tensorflow_approx` registers the ops, their gradient and the Keras layers whenever TensorFlow
is importable, so saved models (SavedModel, .keras) load after this one import.
`tensorflow_approx.multipliers` needs NumPy only and works without TensorFlow.
"""

import importlib
import importlib.util
import sys

__version__ = "0.1.0"

# Submodules reachable as attributes without an import statement.
_SUBMODULES = ("explore", "layers", "multipliers")

_EXPORTS = {
    "approx_conv2d_with_min_max_vars": "tensorflow_approx.python.ops.approx_conv_ops",
    "approx_conv2d_with_table": "tensorflow_approx.python.ops.approx_conv_ops",
    "approx_conv2d_with_batch_ranges": "tensorflow_approx.python.ops.approx_conv_ops",
    "range_with_zero": "tensorflow_approx.python.ops.approx_conv_ops",
    "register_decomposition": "tensorflow_approx.python.ops.approx_conv_ops",
    # Keras 3 layers, calibration and model conversion (tensorflow_approx/python/keras).
    "FakeApproxConv2D": "tensorflow_approx.python.keras.layers",
    "FakeApproxDepthwiseConv2D": "tensorflow_approx.python.keras.layers",
    "FakeApproxDense": "tensorflow_approx.python.keras.layers",
    "calibrate": "tensorflow_approx.python.keras.calibration",
    "approximate_model": "tensorflow_approx.python.keras.convert",
}

__all__ = sorted([*_EXPORTS, *_SUBMODULES])

# Why the import failed when TensorFlow is present but the op library is not (a source checkout
# before `bazel build`): kept so that `import tensorflow_approx.multipliers` still works there, and
# raised on first use of an op or layer.
_load_error = None


def _register():
    """Loads the op library (ops + gradients) and the Keras layer classes into their registries."""
    global _load_error
    if importlib.util.find_spec("tensorflow") is None:
        return
    argv = getattr(sys, "orig_argv", [])
    if "-m" in argv and argv[argv.index("-m") + 1 :][:1] == [f"{__name__}.multipliers"]:
        return  # `python -m tensorflow_approx.multipliers`: NumPy only, no seconds spent loading TF
    try:
        for module in sorted(set(_EXPORTS.values())):
            importlib.import_module(module)
    except ImportError as error:
        _load_error = error


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _EXPORTS:
        if _load_error is not None:
            raise _load_error
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tensorflow_approx' has no attribute {name!r}")


_register()
