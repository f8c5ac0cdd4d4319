"""No code of a dumped value runs in the dumping thread: every Python-level repr
in a dump with locals, those that C reprs call included, runs under the time
bound, and nothing it raises escapes.  Each case runs in a child process, so a
dump that hangs or an exception that escapes fails the test, not the run."""

import json
import os
import re
import subprocess
import sys

import pytest

import tbfast
from conftest import needs_core
from workerkit import ask

# A worker whose thread "holder" has `values` as locals and holds `lock`, which the
# repr of Inner takes: a repr run in the dumping thread would wait for good.
SETUP = r"""
import collections, functools, json, os, sys, threading, types
import tbfast

lock = threading.Lock()
parked = threading.Event()

class Inner:
    def __repr__(self):
        MODE
        return "Inner()"

Named = type("int", (), {"__repr__": Inner.__repr__})  # reprlib dispatches by this name

def hold(values, release):
    with lock:
        parked.set()
        release.wait(60)

release = threading.Event()
values = {
    "named_like_int": Named(),
    "namespace": types.SimpleNamespace(inner=Inner()),
    "ordered": collections.OrderedDict(inner=Inner()),
    "exception": ValueError(Inner()),
    "partial": functools.partial(print, Inner()),
    "in_a_list": [Inner()],
}
holder = threading.Thread(target=hold, args=(values, release), name="holder", daemon=True)
holder.start()
parked.wait(10)
"""
# Then the main thread prints the shown locals of holder's frame, and each value's repr.
WORKER = SETUP + r"""
document = json.loads(tbfast.format_traceback(format="json", locals=True))
(thread,) = [thread for thread in document["threads"] if thread["name"] == "holder"]
(frame,) = [frame for frame in thread["frames"] if frame["function"] == "hold"]
print(json.dumps(frame["locals"]["values"]))
print(json.dumps({name: tbfast.safe_repr.repr(value) for name, value in values.items()}))
release.set()
"""

CASES = ("named_like_int", "namespace", "ordered", "exception", "partial", "in_a_list")
# What a repr that overran shows, or one not tried since earlier ones still run.
BOUNDED = re.compile(r"<\w+ object; repr (timed out after|skipped: )")


def run_worker(mode):
    # The timeout only tells a hang from an end: each child ends in about a second.
    result = subprocess.run([sys.executable, "-c", WORKER.replace("MODE", mode)],
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_a_repr_that_waits_for_a_lock_the_dumped_thread_holds_costs_one_bounded_wait():
    values_local, shown = run_worker("lock.acquire(); lock.release()")
    for case in CASES:
        assert BOUNDED.search(shown[case]), (case, shown[case])
    assert BOUNDED.search(values_local) and "Inner()" not in values_local


@pytest.mark.parametrize("exception", ["KeyboardInterrupt", "SystemExit"])
def test_an_exception_raised_in_any_repr_is_shown_not_raised(exception):
    _, shown = run_worker("raise %s('from a repr')" % exception)
    for case in CASES:
        assert "repr raised %s: from a repr" % exception in shown[case], (case, shown[case])


def test_plain_values_are_shown_inline_as_repr_shows_them():
    safe = tbfast.saferepr.SafeRepr()
    plain = [None, True, 42, 1.5, "text", b"bytes", [1, "a"], (1, 2), {"a": 1}, {1, 2},
             frozenset({3}), range(3), len, print, tbfast.saferepr.SafeRepr]
    for value in plain:
        assert safe.repr(value) == repr(value)
    assert safe.repr({"b": 1, "a": 2}) == "{'a': 2, 'b': 1}"


@needs_core
def test_the_consistent_thread_survives_a_repr_that_raises_system_exit(tmp_path):
    script = SETUP.replace("MODE", "raise SystemExit('from a repr')") + r"""
tbfast.enable_tracebacker(sys.argv[1])
print(tbfast.sockets.current().path, flush=True)
sys.stdin.readline()
release.set()
"""
    child = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "tb")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        path = child.stdout.readline().decode().strip()
        answers = [json.loads(ask(path, b"json locals\n", timeout=30)) for _ in range(2)]
        # "python": the consistent thread's dump with locals, each time; "gil-free": its stand-in
        assert [answer["mode"] for answer in answers] == ["python", "python"]
        child.stdin.write(b"done\n")
        child.stdin.close()
        assert child.wait(30) == 0
    finally:
        child.kill()
        child.wait(10)


# A frame with a local for each name the default mask words must hide, and more; it
# prints what the Python formatter and the core show of them, before and after
# tbfast.configure(mask=...), as JSON.
MASK_WORKER = r"""
import json, os, sys, tbfast

def shown_locals():
    auth = pwd = jwt = bearer = dsn = database_url = passphrase = privkey = creds = "hidden"
    customer_ssn = iban_number = "hidden"
    plain = "shown"
    python = json.loads(tbfast.format_traceback(all_threads=False, format="json", locals=True))
    shown = {"python": python["threads"][0]["frames"][0]["locals"]}
    if tbfast.HAS_CORE:
        core = json.loads(tbfast._impl.format_dump(False, "json", 0, "api", False, True))
        shown["core"] = core["threads"][0]["frames"][0]["locals"]
    return shown

print(json.dumps(shown_locals()))
tbfast.configure(mask=["plain"])
print(json.dumps(shown_locals()))
"""
DEFAULT_MASKED = ("auth", "pwd", "jwt", "bearer", "dsn", "database_url", "passphrase", "privkey",
                  "creds")


def test_mask_words_cover_more_names_and_are_configured_by_api_and_environment():
    result = subprocess.run([sys.executable, "-c", MASK_WORKER], capture_output=True, timeout=60,
                            env=dict(os.environ, TBFAST_MASK="ssn, IBAN"))
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    before, after = [json.loads(line) for line in result.stdout.splitlines()]
    assert set(before) == ({"python", "core"} if tbfast.HAS_CORE else {"python"})
    for shown in before.values():
        masked = {name for name, value in shown.items() if value == tbfast.saferepr.MASKED}
        assert masked == set(DEFAULT_MASKED) | {"customer_ssn", "iban_number"}
        assert shown["plain"] == "'shown'"
    for shown in after.values():
        masked = {name for name, value in shown.items() if value == tbfast.saferepr.MASKED}
        assert masked == {"plain"}


@pytest.mark.parametrize("mask, error", [
    ("password", TypeError), (["ok", ""], ValueError), ([1], ValueError), (["a\0b"], ValueError)])
def test_bad_mask_words_are_refused_and_change_nothing(mask, error):
    before = tbfast.safe_repr.mask
    with pytest.raises(error, match="mask"):
        tbfast.configure(mask=mask)
    assert tbfast.safe_repr.mask == before
