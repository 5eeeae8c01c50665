"""Offline stand-in for rules_proto: re-exports Bazel 4.2's native proto rule."""
proto_library = native.proto_library
ProtoInfo = ProtoInfo
