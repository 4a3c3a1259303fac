"""Build hook for the one C++ extension, ``edgelstm.fast._kernels``.

Everything else lives in pyproject.toml. The kernels are built with CMake
(kernels/CMakeLists.txt) through mlx.extension.CMakeBuild; a compiler or
CMake error fails the install, there is no silent pure-Python fallback.

EDGELSTM_BUILD_KERNELS=0 skips the extension (machines without a compiler):
the package then installs without edgelstm.fast._kernels and runs its
pure-MLX path.
"""

import os

from setuptools import setup


def _ext_modules():
    if os.environ.get("EDGELSTM_BUILD_KERNELS", "1").strip().lower() in ("0", "off", "false", "no"):
        return [], {}
    # Imported here so the escape hatch works even where mlx cannot import.
    from mlx.extension import CMakeBuild, CMakeExtension

    return [CMakeExtension("edgelstm.fast._kernels", sourcedir="kernels")], {
        "build_ext": CMakeBuild
    }


ext_modules, cmdclass = _ext_modules()
setup(ext_modules=ext_modules, cmdclass=cmdclass, zip_safe=False)
