"""Builds tbfast._tbcore; when it can't, tbfast installs with its pure-Python fallback.

TBFAST_NO_EXTENSIONS=1 skips the build on purpose.  Free-threaded CPython
always gets the fallback: the core's GIL-free walk is unsafe without a GIL.
"""

import os
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

AUTOSTART_PTH = "tbfast_autostart.pth"


class OptionalBuildExt(build_ext):
    """A failed compile is reported loudly and leaves the fallback in place."""

    def run(self):
        try:
            super().run()
        except Exception as error:  # noqa: BLE001 - any build failure means fallback
            self._fall_back(error, self.extensions)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as error:  # noqa: BLE001
            self._fall_back(error, [ext])

    def _fall_back(self, error, failed):
        # A core left in build/ by an earlier build must not ship in place of the fallback.
        for ext in failed:
            stale = self.get_ext_fullpath(ext.name)
            if os.path.exists(stale):
                os.remove(stale)
        sys.stderr.write(
            "\n*** tbfast: building the C core failed (%s);\n"
            "*** installing the pure-Python fallback, which needs the GIL to dump.\n\n" % error)


class BuildPyWithPth(build_py):
    """Puts tbfast_autostart.pth at the top of the build, so that it lands in
    site-packages itself (as pytest-cov does with its .pth): TBFAST_TRACEBACKER
    then enables the tracebacker in every process, with no code change."""

    def run(self):
        super().run()
        here = os.path.dirname(os.path.abspath(__file__))
        self.copy_file(os.path.join(here, AUTOSTART_PTH),
                       os.path.join(self.build_lib, AUTOSTART_PTH), preserve_mode=False)

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [
            os.path.join(self.build_lib, AUTOSTART_PTH)]


def extensions():
    if os.environ.get("TBFAST_NO_EXTENSIONS"):
        return []
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        sys.stderr.write("*** tbfast: free-threaded CPython: installing the pure-Python fallback\n")
        return []
    from Cython.Build import cythonize

    sanitize = os.environ.get("TBFAST_SANITIZE")  # e.g. "address,undefined"
    flags = ["-O2", "-fno-strict-aliasing"]
    link = []
    if sanitize:
        flags = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=" + sanitize]
        link = ["-fsanitize=" + sanitize]
    # TBFAST_DISABLE_GUARD=1 builds without the fault guard, only to show that the
    # robustness tests catch its absence (docs/robustness.md).
    macros = [("TBFAST_DISABLE_GUARD", "1")] if os.environ.get("TBFAST_DISABLE_GUARD") else []
    core = Extension(
        "tbfast._tbcore",
        sources=["src/_tbcore.pyx"],
        include_dirs=["src"],
        define_macros=macros,
        extra_compile_args=flags,
        extra_link_args=link,
    )
    return cythonize([core], compiler_directives={"language_level": 3},
                     include_path=["src"], quiet=True)


def build_base():
    """Where a build keeps its objects and extension: setuptools skips building an
    extension that is newer than its sources, so a sanitized or guard-less build
    must never share that place with a normal one (nor a normal one with it)."""
    kind = "-".join(filter(None, (
        "sanitize-" + os.environ["TBFAST_SANITIZE"].replace(",", "-")
        if os.environ.get("TBFAST_SANITIZE") else "",
        "noguard" if os.environ.get("TBFAST_DISABLE_GUARD") else "")))
    return os.path.join("build", kind) if kind else "build"


setup(ext_modules=extensions(),
      cmdclass={"build_ext": OptionalBuildExt, "build_py": BuildPyWithPth},
      options={"build": {"build_base": build_base()}})
