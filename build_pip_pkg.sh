#!/usr/bin/env bash
# Builds the wheel into DEST: configures Bazel if that was not done, builds the op library, stages the
# Python package with it and runs setup.py. The platform tag is the manylinux level that the library's
# glibc symbol versions allow (at least manylinux_2_17).
#
#   ./build_pip_pkg.sh DEST
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 DEST" >&2
  exit 2
fi
cd "$(dirname "$0")"
root=$(pwd)
mkdir -p "$1"
dest=$(cd "$1" && pwd)

if [ -n "${PYTHON:-}" ]; then
  python=$PYTHON
elif [ -x "$root/.venv/bin/python" ]; then
  python=$root/.venv/bin/python
else
  python=python3
fi
if [ ! -f .tf_configure.bazelrc ]; then
  ./configure.sh --python "$python"
fi
bazel build //tensorflow_approx:pip_files

library=bazel-bin/tensorflow_approx/python/ops/_approx_conv_ops.so
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
# The package's Python sources (tests excluded) and the freshly built library.
(cd "$root" && find tensorflow_approx -name '*.py' ! -name '*_test.py' -print0 |
  xargs -0 -I{} install -D -m 644 {} "$staging/{}")
install -m 755 "$library" "$staging/tensorflow_approx/python/ops/"
cp setup.py MANIFEST.in README.md "$staging/"

glibc=$(objdump -T "$library" | grep -o 'GLIBC_2\.[0-9]*' | sed 's/GLIBC_2\.//' | sort -n | tail -1)
glibc=$(( glibc > 17 ? glibc : 17 ))
tf_series=$("$python" -c 'import tensorflow as tf; print(".".join(tf.__version__.split(".")[:2]))')
(
  cd "$staging"
  TFAPPROX_PLATFORM_TAG="manylinux_2_${glibc}_$(uname -m)" \
  TFAPPROX_TF_REQUIREMENT="tensorflow==${tf_series}.*" \
    "$python" setup.py -q bdist_wheel -d "$dest" >/dev/null
)
echo "build_pip_pkg.sh: wrote $(ls "$dest"/*.whl)"
