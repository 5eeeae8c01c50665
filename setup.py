"""Packaging of tensorflow_approx; run by ./build_pip_pkg.sh on a staging copy with the built op library.

The op library is tied to the TensorFlow it was built against (its C++ ABI), not to a Python version,
so the wheel is tagged py3-none-<platform> and pins that TensorFlow release series.
"""

import os

from setuptools import find_packages, setup
from setuptools.dist import Distribution
try:  # setuptools >= 70.1 has the command; older ones need the wheel package's
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:
    from wheel.bdist_wheel import bdist_wheel


class BinaryDistribution(Distribution):
    def has_ext_modules(self):
        return True


class PlatformWheel(bdist_wheel):
    def get_tag(self):
        return "py3", "none", os.environ["TFAPPROX_PLATFORM_TAG"]


setup(
    name="tensorflow-approx",
    version=os.environ.get("TFAPPROX_VERSION", "0.1.0"),
    description="Convolutions with approximate 8-bit multipliers (lookup tables) for TensorFlow",
    long_description=open("README.md").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(exclude=["*_test"]),
    package_data={"tensorflow_approx": ["python/ops/_approx_conv_ops.so"]},
    include_package_data=True,
    install_requires=[os.environ.get("TFAPPROX_TF_REQUIREMENT", "tensorflow>=2.21,<2.22"),
                      "numpy", "absl-py"],
    extras_require={"plot": ["matplotlib"]},
    python_requires=">=3.9",
    distclass=BinaryDistribution,
    cmdclass={"bdist_wheel": PlatformWheel},
    zip_safe=False,
)
