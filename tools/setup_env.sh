#!/usr/bin/env bash
# Installs what building and testing need, on a fresh Debian machine with Python 3.11, then configures
# Bazel. Idempotent: each step is skipped when already done. Source it (it exports PYTHON).
#   Bazel: Debian's bazel-bootstrap (works offline with third_party/offline).
#   Python: a virtual environment .venv with requirements.txt (TensorFlow from PyPI).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v bazel >/dev/null 2>&1; then
  echo "setup: installing Debian's bazel-bootstrap"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bazel-bootstrap >/dev/null
fi

venv="$repo/.venv"
if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    rm -rf "$venv"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
fi
export PYTHON="$venv/bin/python"
# Bazel's py_test launchers start with `#!/usr/bin/env python` and the tests inherit this PATH: the venv
# first, so that they run where Debian has only python3 (seen with a bare PATH: every Python test failed).
export PATH="$venv/bin:$PATH"
if ! "$PYTHON" -c 'import tensorflow, numpy, absl, pytest, setuptools, wheel, sklearn' 2>/dev/null; then
  echo "setup: installing requirements.txt into $venv"
  "$PYTHON" -m pip install -q --disable-pip-version-check -r "$repo/requirements.txt"
fi

if [ ! -f "$repo/.tf_configure.bazelrc" ] || ! grep -q "$PYTHON" "$repo/.tf_configure.bazelrc"; then
  "$repo/configure.sh" --python "$PYTHON"
fi
