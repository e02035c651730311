"""Build of the two C extensions (everything else is declared in setup.cfg and pyproject.toml).

The extensions are optional: without a C compiler and Python's headers the package still installs and runs on
the Python/numpy paths they replace (same results, slower), and the build says so loudly. ``make test`` installs
the compiler first and tests/test_speed_paths.py::test_the_c_extensions_are_built fails when they are missing.
"""

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

EXTENSIONS = [
    Extension("analyzer.ingest._recordwalk", ["analyzer/ingest/_recordwalk.c"], extra_compile_args=["-O2"]),
    Extension("analyzer.dissect._prefilter", ["analyzer/dissect/_prefilter.c"], extra_compile_args=["-O2"]),
]


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing when an extension cannot be compiled."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - no compiler at all (distutils raises several types)
            self._warn(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - compiler or Python.h missing
            self._warn(exc, ext.name)

    @staticmethod
    def _warn(exc, name="the C extensions"):
        bar = "*" * 78
        sys.stderr.write(
            f"\n{bar}\nWARNING: could not build {name} ({exc}).\nmailpush will work, but its record walk and "
            f"pre-filter fall back to Python and numpy: about 0.5 s more per million frames.\nInstall a C "
            f"compiler and the Python headers (Debian: apt-get install gcc python3-dev) and reinstall.\n{bar}\n\n")


setup(ext_modules=EXTENSIONS, cmdclass={"build_ext": OptionalBuildExt})
