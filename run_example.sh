#!/usr/bin/env bash
# The main job: sets up (Bazel, a .venv with TensorFlow), builds the op and runs the example.
set -euo pipefail
cd "$(dirname "$0")"
source tools/setup_env.sh
bazel build //tensorflow_approx:python/ops/_approx_conv_ops.so
"$PYTHON" examples/op_demo.py "$@"
