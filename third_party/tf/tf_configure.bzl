"""Repository rule exposing the pip-installed TensorFlow to Bazel.

./configure.sh writes TF_HEADER_DIR, TF_SHARED_LIBRARY_DIR and TF_SHARED_LIBRARY_NAME into
.tf_configure.bazelrc; this rule links them into @local_config_tf.
"""

_ENV = ["TF_HEADER_DIR", "TF_SHARED_LIBRARY_DIR", "TF_SHARED_LIBRARY_NAME"]

def _tf_configure_impl(ctx):
    env = {}
    for name in _ENV:
        value = ctx.os.environ.get(name, "")
        if not value:
            fail("%s is not set: run ./configure.sh first (it finds the pip-installed TensorFlow)" % name)
        env[name] = value
    ctx.symlink(env["TF_HEADER_DIR"], "include")
    lib = env["TF_SHARED_LIBRARY_NAME"]
    ctx.symlink(env["TF_SHARED_LIBRARY_DIR"] + "/" + lib, lib)
    ctx.file("BUILD", """
package(default_visibility = ["//visibility:public"])

cc_library(
    name = "tf_header_lib",
    hdrs = glob(["include/**"]),
    includes = ["include"],
)

cc_library(
    name = "libtensorflow_framework",
    srcs = ["{lib}"],
)
""".format(lib = lib))

tf_configure = repository_rule(
    implementation = _tf_configure_impl,
    environ = _ENV,
    local = True,
)
