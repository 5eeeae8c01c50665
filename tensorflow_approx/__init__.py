"""tensorflow_approx: convolutions with approximate 8-bit multipliers for TensorFlow.

The op ApproxConv2DWithMinMaxVars fake-quantizes input and filter to 8-bit codes, takes each product
from a 256 x 256 table (an approximate multiplier) and sums the products exactly in integers.

Names are imported on first use, so `tensorflow_approx.multipliers` works without TensorFlow or the
op library.
"""

import importlib

__version__ = "0.1.0"

# Submodules reachable as attributes without an import statement.
_SUBMODULES = ("layers", "multipliers")

_LAZY = {
    "approx_conv2d_with_min_max_vars": "tensorflow_approx.python.ops.approx_conv_ops",
    # Keras 3 layers, calibration and model conversion (tensorflow_approx/python/keras).
    "FakeApproxConv2D": "tensorflow_approx.python.keras.layers",
    "FakeApproxDepthwiseConv2D": "tensorflow_approx.python.keras.layers",
    "FakeApproxDense": "tensorflow_approx.python.keras.layers",
    "calibrate": "tensorflow_approx.python.keras.calibration",
    "approximate_model": "tensorflow_approx.python.keras.convert",
}

__all__ = sorted([*_LAZY, *_SUBMODULES])


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tensorflow_approx' has no attribute {name!r}")
