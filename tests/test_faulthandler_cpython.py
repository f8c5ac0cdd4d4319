"""CPython's own test_faulthandler.py, of the running interpreter, against
tbfast.faulthandler: every test that is not Windows-only must pass.

The file is copied with its `import faulthandler` lines pointed at
tbfast.faulthandler, line for line (the tests check line numbers), while the
private crash helpers (`_sigsegv`, `_read_null`, ...) stay the standard
library's.  It runs under unittest in a child process: pytest enables the
standard faulthandler in its own process, and its children start with -E, so
they find tbfast where it is installed, as a user's program would.
"""

import os
import re
import subprocess
import sys
import sysconfig

import pytest

from conftest import needs_core

# What cannot run here, with why.  Every other test must pass.
NOT_HERE = {
    "test_raise_exception": "Windows only",
    "test_ignore_exception": "Windows only",
    "test_raise_nonfatal_exception": "Windows only",
    "test_disable_windows_exc_handler": "Windows only",
    "test_free_threaded_dump_traceback": "free-threaded builds only, which use the standard faulthandler",
}

REWRITES = (
    (re.compile(r"^(\s*)import faulthandler$", re.MULTILINE), r"\1from tbfast import faulthandler"),
    (re.compile(r'"import faulthandler; '), '"from tbfast import faulthandler; '),
    (re.compile(r"^(\s*)faulthandler\.(_\w+)", re.MULTILINE), r"\1__import__('faulthandler').\2"),
    (re.compile(r"hasattr\(faulthandler, (['\"])_"), r"hasattr(__import__('faulthandler'), \1_"),
)
RESULT = re.compile(r"^(test_\w+) \(.*?\)(?:\n.*?)? \.\.\. (ok|FAIL|ERROR|skipped .*|expected failure)$",
                    re.MULTILINE)


def cpython_test_file():
    path = os.path.join(sysconfig.get_path("stdlib"), "test", "test_faulthandler.py")
    if not os.path.exists(path):
        pytest.skip("this CPython ships no test/test_faulthandler.py (Debian: the "
                    "libpython3.X-testsuite package, which scripts/sid-root installs)")
    return path


def pointed_at_tbfast(source):
    for pattern, replacement in REWRITES:
        source = pattern.sub(replacement, source)
    return source


@needs_core
def test_cpython_test_faulthandler_passes_against_tbfast(tmp_path):
    with open(cpython_test_file(), encoding="utf-8") as original:
        source = original.read()
    rewritten = pointed_at_tbfast(source)
    assert rewritten.count("\n") == source.count("\n")
    assert re.search(r"^\s*import faulthandler$", rewritten, re.MULTILINE) is None
    (tmp_path / "test_faulthandler.py").write_text(rewritten, encoding="utf-8")
    env = {name: value for name, value in os.environ.items()
           if name not in ("PYTHONFAULTHANDLER", "PYTHONDEVMODE", "PYTHONPATH", "PYTHONSAFEPATH")}
    result = subprocess.run([sys.executable, "-m", "unittest", "-v", "test_faulthandler"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    report = result.stderr
    outcomes = dict(RESULT.findall(report))
    assert len(outcomes) >= 40, report
    wrong = {name: outcome for name, outcome in outcomes.items()
             if outcome != "ok" and not (outcome.startswith("skipped") and name in NOT_HERE)}
    assert not wrong, "%s\n\n%s" % (wrong, report[-20000:])
    assert result.returncode == 0, report[-20000:]
