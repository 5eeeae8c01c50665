#!/usr/bin/env bash
# The seed's example end to end: train LeNet-5 accurately, evaluate it with FakeApproxConv2D layers
# and the exact 8x8 multiplier, then with an approximate one, then compare several multipliers.
#
#   examples/run_example.sh [MTAB_FILE]       # or MTAB_FILE=... ; MTAB_DIR=dir adds its *.bin
#
# The approximate table is MTAB_FILE when given (e.g. an EvoApprox mul8u_L40.bin), else a home-made
# one (each operand loses its 2 low bits). Data: MNIST if Keras has it cached, else scikit-learn's
# 8x8 digits (scikit-learn is installed when missing). PYTHON picks the interpreter (default
# python3); it needs TensorFlow and the built op library (bazel build //tensorflow_approx/...).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
mtab=${1:-${MTAB_FILE:-}}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$SECONDS

if ! "$PYTHON" -c 'import sklearn' 2>/dev/null; then
  echo "run_example: installing scikit-learn (its 8x8 digits are the offline data set)"
  "$PYTHON" -m pip install -q --disable-pip-version-check scikit-learn
fi

# TensorFlow's C++ start-up messages go to a log, shown only when a step fails.
step() {
  if ! "$PYTHON" "$@" 2>"$work/stderr.log"; then
    cat "$work/stderr.log" >&2
    exit 1
  fi
}

compare_extra=()
if [ -z "$mtab" ]; then
  mtab="$work/trunc2.bin"
  step -m tensorflow_approx.multipliers convert optrunc2 "$mtab"  # both operands lose 2 low bits
else
  compare_extra+=(--mtab_files "$mtab")
fi
if [ -n "${MTAB_DIR:-}" ]; then
  compare_extra+=(--mtab_dir "$MTAB_DIR")
fi
weights="$work/lenet5.weights.h5"

step examples/fake_approx_train.py --weights "$weights" | tee "$work/train.txt"
step examples/fake_approx_eval.py --weights "$weights" | tee "$work/exact.txt"
step examples/fake_approx_eval.py --weights "$weights" --mtab_file "$mtab" | tee "$work/approx.txt"
step examples/compare_multipliers.py --weights "$weights" ${compare_extra[@]+"${compare_extra[@]}"}

accuracy() { sed -n 's/^Test accuracy: //p' "$1"; }
row() { printf '  %-52s %s\n' "$1" "$2"; }
echo "================================================================================"
echo "Summary: LeNet-5 on $(sed -n 's/^Dataset: //p' "$work/train.txt")"
row "float32, accurate Conv2D:" "$(accuracy "$work/train.txt")"
row "FakeApproxConv2D, exact 8x8 multiplier:" "$(accuracy "$work/exact.txt")"
row "FakeApproxConv2D, approximate $(basename "$mtab"):" "$(accuracy "$work/approx.txt")"
echo "  ($((SECONDS - start)) s)"
