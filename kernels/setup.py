"""Build edgelstm_kernels: one CMake/nanobind extension, ``edgelstm_kernels._ext``."""

from mlx import extension
from setuptools import setup

if __name__ == "__main__":
    setup(
        ext_modules=[extension.CMakeExtension("edgelstm_kernels._ext")],
        cmdclass={"build_ext": extension.CMakeBuild},
        packages=["edgelstm_kernels"],
        package_data={"edgelstm_kernels": ["*.so", "*.dylib"]},
        zip_safe=False,
    )
