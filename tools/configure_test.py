"""configure.sh turns the GPU kernels on only where they can build: nvcc AND a CUDA TensorFlow.

tensorflow-cpu is stood in for by a stub `tensorflow` package (what configure.sh reads of it:
sysconfig, test.is_built_with_cuda, __version__) placed first on PYTHONPATH, and nvcc by a stub on
PATH, so the test needs neither a second TensorFlow nor the CUDA toolkit.
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STUB_TF = '''
__version__ = "2.21.0-stub"
class sysconfig:
    get_include = staticmethod(lambda: {include!r})
    get_lib = staticmethod(lambda: {include!r})
    get_link_flags = staticmethod(lambda: ["-L" + {include!r}, "-l:libtensorflow_framework.so.2"])
    get_compile_flags = staticmethod(lambda: ["-I" + {include!r}, "-D_GLIBCXX_USE_CXX11_ABI=1"])
class test:
    is_built_with_cuda = staticmethod(lambda: {cuda!r})
'''


def configure(tmp_path, *args, cuda_tf):
    """Runs configure.sh against a stub TensorFlow; returns (exit status, output, written rc)."""
    include = tmp_path / "include"
    if cuda_tf:
        headers = include / "third_party" / "gpus" / "cuda" / "include"
        headers.mkdir(parents=True)
        (headers / "cuda_runtime.h").write_text("")
    else:
        include.mkdir()
    stub = tmp_path / "site" / "tensorflow"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(STUB_TF.format(include=str(include), cuda=cuda_tf))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    nvcc = bin_dir / "nvcc"
    nvcc.write_text("#!/bin/sh\nexit 0\n")
    nvcc.chmod(0o755)
    out = tmp_path / "tf_configure.bazelrc"
    env = dict(
        os.environ,
        PYTHONPATH=str(tmp_path / "site"),
        PATH=f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        TF_CONFIGURE_OUTPUT=str(out),
    )
    result = subprocess.run(
        ["bash", os.path.join(ROOT, "configure.sh"), "--python", sys.executable, *args],
        env=env, capture_output=True, text=True, timeout=120,
    )
    written = out.read_text() if out.exists() else ""
    return result.returncode, result.stdout + result.stderr, written


def test_tensorflow_cpu_with_nvcc_builds_cpu_only_and_says_so(tmp_path):
    status, output, rc = configure(tmp_path, cuda_tf=False)
    assert status == 0, output
    assert "no CUDA support" in output and "CPU kernels only" in output
    assert "using_cuda" not in rc
    assert "TF_HEADER_DIR" in rc  # the rest of the configuration is written


def test_cuda_tensorflow_with_nvcc_turns_the_gpu_kernels_on(tmp_path):
    status, output, rc = configure(tmp_path, cuda_tf=True)
    assert status == 0, output
    assert "build --define=using_cuda=true" in rc
    assert "GPU kernels on" in output


def test_forced_cuda_against_tensorflow_cpu_fails_clearly(tmp_path):
    status, output, _ = configure(tmp_path, "--cuda", cuda_tf=False)
    assert status == 1
    assert "--cuda given but this TensorFlow is not a CUDA build" in output


if __name__ == "__main__":
    sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", __file__]))
