"""Build flashlb's C++ extension (flashlb._C): operator schemas, CPU kernels, solver core.

The extension is compiled against the C++ API of the torch installed in the build
environment, so that torch is what the package requires: ``torch==<build torch>``, recorded
in ``flashlb/_build_info.py`` (checked at import). Build without isolation, after installing
the torch you serve with: ``pip install --no-build-isolation .`` (or ``pip wheel``).
Everything else is declared in pyproject.toml.
"""
import glob
import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

HERE = os.path.dirname(os.path.abspath(__file__))
TORCH_VERSION = torch.__version__            # e.g. "2.13.0+cpu"
TORCH_RELEASE = TORCH_VERSION.split("+")[0]  # "2.13.0": also satisfied by other local builds


def write_build_info() -> None:
    text = ('"""Written by setup.py at build time: the torch the extension was compiled against."""\n\n'
            f"TORCH_VERSION = {TORCH_VERSION!r}\n")
    path = os.path.join(HERE, "flashlb", "_build_info.py")
    old = open(path).read() if os.path.exists(path) else None
    if old != text:
        with open(path, "w") as f:
            f.write(text)


write_build_info()

# The NPU launchers (host/npu) need CANN and torch_npu; build.sh compiles them separately.
sources = sorted(
    os.path.relpath(p, HERE)
    for p in glob.glob(os.path.join(HERE, "host", "**", "*.cpp"), recursive=True)
    if os.sep + "npu" + os.sep not in p
)

# at::parallel_for (the solver's problems, the hotness histograms) is inline code: under a torch
# built with OpenMP it runs on threads only if the extension is compiled with -fopenmp, and
# serially otherwise. Compile-only: the GOMP symbols bind to the runtime torch already loads,
# so no second OpenMP runtime (with its own thread pool) enters the process.
OPENMP = ["-fopenmp"] if torch.backends.openmp.is_available() else []

setup(
    install_requires=[f"torch=={TORCH_RELEASE}", "numpy", "safetensors"],
    ext_modules=[
        CppExtension(
            "flashlb._C",
            sources,
            include_dirs=[os.path.join(HERE, "host", "include")],
            extra_compile_args=["-O3", "-std=c++20"] + OPENMP,
        )
    ],
    cmdclass={"build_ext": BuildExtension},
)
