"""Keras 3 layers with approximate multipliers, calibration and model conversion."""

from tensorflow_approx.python.keras import calibration, convert, layers  # noqa: F401
