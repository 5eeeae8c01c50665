"""`tensorflow_approx.layers`: the approximate Keras layers (from python/keras/layers)."""

from tensorflow_approx.python.keras.layers import (
    RANGE_MODES,
    FakeApproxConv2D,
    FakeApproxDense,
    FakeApproxDepthwiseConv2D,
    approx_layers,
)

__all__ = [
    "RANGE_MODES",
    "FakeApproxConv2D",
    "FakeApproxDense",
    "FakeApproxDepthwiseConv2D",
    "approx_layers",
]
