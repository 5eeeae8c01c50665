"""`tensorflow_approx.layers`: the approximate Keras layers (from python/keras/layers)."""

from tensorflow_approx.python.keras import layers as _layers
from tensorflow_approx.python.keras.layers import *  # noqa: F401,F403 (the names of __all__)

__all__ = list(_layers.__all__)
