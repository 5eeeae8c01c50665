"""Offline stand-in for rules_python: re-exports Bazel 4.2's native Python rules."""
py_binary = native.py_binary
py_library = native.py_library
py_runtime = native.py_runtime
py_test = native.py_test
