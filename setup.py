"""Build the Cython piece-bitmap extension; everything else is declared in pyproject.toml."""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("DRAGONFLY_DEBUG_BUILD") == "1"

extensions = [
    Extension(
        "dragonfly._bitmap",
        ["ext/bitmap/_bitmap.pyx"],
        define_macros=[("DRAGONFLY_BUILD_PROFILE", '"debug"' if debug else '"release"')],
        extra_compile_args=["-O0", "-g"] if debug else ["-O3"],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False, "cdivision": True},
    )
)
