#!/usr/bin/env bash
# Finds the pip-installed TensorFlow (through tf.sysconfig) and writes .tf_configure.bazelrc for Bazel.
# Non-interactive: everything optional is a flag.
#
#   ./configure.sh [--python PATH] [--cuda | --no-cuda]
#
#   --python PATH  the interpreter that has TensorFlow (default: $PYTHON_BIN_PATH, else python3)
#   --cuda         build the GPU kernels (fails if nvcc is missing or TensorFlow has no CUDA)
#   --no-cuda      never build the GPU kernels
#   default: build the GPU kernels when nvcc is found and TensorFlow is a CUDA build that ships the
#   CUDA headers its own headers include (tensorflow-cpu has neither, and no GPU device to use them)
#   TF_CONFIGURE_OUTPUT=FILE writes FILE instead of .tf_configure.bazelrc (for tests).
set -euo pipefail
cd "$(dirname "$0")"
root=$(pwd)

python=${PYTHON_BIN_PATH:-python3}
cuda=auto
while [ $# -gt 0 ]; do
  case "$1" in
    --python) python=$2; shift 2 ;;
    --cuda) cuda=yes; shift ;;
    --no-cuda) cuda=no; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "configure.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

python=$(command -v "$python" || true)
if [ -z "$python" ] || ! "$python" -c 'import tensorflow' 2>/dev/null; then
  echo "configure.sh: no TensorFlow importable by '${python:-python3}'; pip install tensorflow, or pass --python" >&2
  exit 1
fi
# The real interpreter, not a shim: Bazel runs py_tests with it.
python=$("$python" -c 'import sys; print(sys.executable)')

read_tf() { "$python" -c "import tensorflow as tf; $1" 2>/dev/null; }
header_dir=$(read_tf 'print(tf.sysconfig.get_include())')
lib_dir=$(read_tf 'print(tf.sysconfig.get_lib())')
lib_name=$(read_tf 'print([f[3:] for f in tf.sysconfig.get_link_flags() if f.startswith("-l:")][0])')
compile_flags=$(read_tf 'print(" ".join(f for f in tf.sysconfig.get_compile_flags() if not f.startswith("-I")))')

out=${TF_CONFIGURE_OUTPUT:-.tf_configure.bazelrc}
{
  echo "# Written by configure.sh on $(date -u +%F); rerun it after changing the Python environment."
  echo "build --action_env TF_HEADER_DIR=\"$header_dir\""
  echo "build --action_env TF_SHARED_LIBRARY_DIR=\"$lib_dir\""
  echo "build --action_env TF_SHARED_LIBRARY_NAME=\"$lib_name\""
  for flag in $compile_flags; do
    case "$flag" in
      --std=*|-std=*) ;;  # .bazelrc sets the standard
      *) echo "build --cxxopt=$flag" ;;
    esac
  done
  echo "build --python_path=\"$python\""
  echo "build --action_env PYTHON_BIN_PATH=\"$python\""
  for repo in rules_cc rules_java rules_python rules_proto remote_coverage_tools; do
    for cmd in build query fetch; do
      echo "$cmd --override_repository=$repo=$root/third_party/offline/$repo"
    done
  done
} > "$out"

nvcc=$(command -v nvcc || true)
if [ "$cuda" = yes ] && [ -z "$nvcc" ]; then
  echo "configure.sh: --cuda given but nvcc is not on PATH" >&2
  exit 1
fi
# The GPU OpKernel includes TensorFlow's GPU headers, which include the CUDA headers TensorFlow
# bundles; a TensorFlow without them (tensorflow-cpu) can neither build nor run it.
tf_cuda=no
if [ "$(read_tf 'print(tf.test.is_built_with_cuda())')" = True ] &&
   [ -f "$header_dir/third_party/gpus/cuda/include/cuda_runtime.h" ]; then
  tf_cuda=yes
fi
if [ "$cuda" = yes ] && [ "$tf_cuda" = no ]; then
  echo "configure.sh: --cuda given but this TensorFlow is not a CUDA build with its CUDA headers" \
       "(tensorflow-cpu?); install the 'tensorflow' package, or build without --cuda" >&2
  exit 1
fi
if [ "$cuda" = auto ] && [ -n "$nvcc" ] && [ "$tf_cuda" = no ]; then
  echo "configure.sh: nvcc found, but TensorFlow $(read_tf 'print(tf.__version__)') has no CUDA" \
       "support (tensorflow-cpu?): building the CPU kernels only"
  cuda=no
fi
if [ "$cuda" != no ] && [ -n "$nvcc" ]; then
  cuda_home=$(cd "$(dirname "$(readlink -f "$nvcc")")/.." && pwd)
  {
    echo "build --define=using_cuda=true"
    echo "build --action_env CUDA_HOME=\"$cuda_home\""
  } >> "$out"
  echo "configure.sh: GPU kernels on (nvcc in $cuda_home)"
else
  echo "configure.sh: GPU kernels off"
fi
echo "configure.sh: TensorFlow $(read_tf 'print(tf.__version__)') from $python; wrote $out"
