#!/usr/bin/env bash
# All tests: sets up (Bazel, a .venv with TensorFlow), runs `bazel test //...`, then builds the wheel
# and checks that it installs and works in a fresh virtual environment.
set -euo pipefail
cd "$(dirname "$0")"
source tools/setup_env.sh

bazel test //... --test_output=errors

dist=$(mktemp -d)
./build_pip_pkg.sh "$dist"
check_env=$(mktemp -d)
"$PYTHON" -m venv "$check_env"
"$check_env/bin/pip" install -q --disable-pip-version-check "$dist"/*.whl
(cd "$check_env" && "$check_env/bin/python" - <<'PY'
import numpy as np
import tensorflow as tf
import tensorflow_approx as ta
x = tf.constant(np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1))
y = ta.approx_conv2d_with_min_max_vars(x, tf.ones([1, 1, 1, 1]), 0.0, 15.0, 0.0, 1.0,
                                       [1, 1, 1, 1], 8, "", "VALID")
assert np.allclose(y.numpy(), x.numpy(), atol=0.1), y
print("wheel check: the installed tensorflow_approx computes a 1x1 convolution correctly")
PY
)
rm -rf "$dist" "$check_env"
echo "run_tests.sh: all tests passed"
