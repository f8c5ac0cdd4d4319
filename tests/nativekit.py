"""The C extension of tests/native/tbnative.c, built with gcc for the running
interpreter: C code that holds the GIL where no Python runs (native frames,
thread states).  `tbnative_dir` is a session fixture: a directory holding
tbnative<EXT_SUFFIX>, to put on a worker's PYTHONPATH; `stripped` is the same
build with its symbol tables removed, for module+offset frames."""

import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native", "tbnative.c")
# The C functions the dumps must name, outermost first.
SPIN_FUNCTIONS = ("tbnative_spin_outer", "tbnative_spin_middle", "tbnative_spin_inner")
GIL_HOLDER_FUNCTIONS = ("tbnative_sleep_holding_gil", "tbnative_nap")
FOREIGN_FUNCTIONS = ("tbnative_foreign_sleep", "tbnative_nap")


def build(directory, strip=False):
    """tbnative built into `directory`; pytest.skip (loudly) where there is no gcc."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: the native tests need it to build their C extension")
    target = os.path.join(directory, "tbnative" + sysconfig.get_config_var("EXT_SUFFIX"))
    # Stripped: its functions hidden from the dynamic symbol table too, as a vendor's
    # build would be, so that nothing can name them.
    hidden = ["-fvisibility=hidden"] if strip else []
    subprocess.run([gcc, "-shared", "-fPIC", "-O1", "-g", "-fno-omit-frame-pointer",
                    "-fno-optimize-sibling-calls", *hidden, "-I" + sysconfig.get_path("include"),
                    SOURCE, "-o", target, "-lpthread"], check=True, timeout=120)
    if strip:
        subprocess.run(["strip", "--strip-all", target], check=True, timeout=60)
    return directory


@pytest.fixture(scope="session")
def tbnative_dir(tmp_path_factory):
    return build(str(tmp_path_factory.mktemp("tbnative")))


@pytest.fixture(scope="session")
def tbnative_stripped_dir(tmp_path_factory):
    return build(str(tmp_path_factory.mktemp("tbnative-stripped")), strip=True)


def load(directory):
    """The module, imported in this process from `directory`."""
    sys.path.insert(0, directory)
    try:
        import tbnative
    finally:
        sys.path.remove(directory)
    return tbnative
