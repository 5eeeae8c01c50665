#!/usr/bin/env bash
# The main job: sets up (Bazel, a .venv with TensorFlow), builds the op, then runs the seed's example
# end to end (examples/run_example.sh): train LeNet-5, evaluate it with FakeApproxConv2D and the exact
# and an approximate multiplier, compare several multipliers. Arguments go to that script.
set -euo pipefail
cd "$(dirname "$0")"
source tools/setup_env.sh
bazel build //tensorflow_approx:python/ops/_approx_conv_ops.so
PYTHON="$PYTHON" examples/run_example.sh "$@"
