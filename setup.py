"""Build flashlb and its C++ extension (flashlb._C): operator schemas, CPU kernels, solver core.

Install torch==2.13.0 first, then `pip install --no-build-isolation .` so the build uses that
torch instead of fetching another one into an isolated environment.
"""
import glob
import os

from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

HERE = os.path.dirname(os.path.abspath(__file__))
# The NPU launchers (host/npu) need CANN and torch_npu; build.sh compiles them separately.
sources = sorted(
    os.path.relpath(p, HERE)
    for p in glob.glob(os.path.join(HERE, "host", "**", "*.cpp"), recursive=True)
    if os.sep + "npu" + os.sep not in p
)

setup(
    name="flashlb",
    version="0.1.0",
    description="Expert-parallelism load balancer for Mixture-of-Experts inference",
    packages=find_packages(include=["flashlb", "flashlb.*"]),
    python_requires=">=3.10",
    install_requires=["torch==2.13.0", "numpy", "safetensors"],
    extras_require={"test": ["pytest", "hypothesis"], "report": ["matplotlib"]},
    ext_modules=[
        CppExtension(
            "flashlb._C",
            sources,
            include_dirs=[os.path.join(HERE, "host", "include")],
            extra_compile_args=["-O3", "-std=c++20", ],
        )
    ],
    cmdclass={"build_ext": BuildExtension},
    entry_points={"console_scripts": ["flashlb=flashlb.cli:main"]},
)
