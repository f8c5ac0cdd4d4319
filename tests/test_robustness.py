"""The dumper never crashes the worker it watches: a frame whose memory went away
under the GIL-free walk is marked <unreadable frame>, and the dump goes on."""

import json
import os
import subprocess
import sys

import pytest

from conftest import needs_core

HERE = os.path.dirname(os.path.abspath(__file__))

# A worker that poisons one frame link of a parked thread, then dumps it from the
# C signal handler (no GIL taken) and through the API, each format once.
POISONED_WORKER = r"""
import json, os, signal, sys, threading
sys.path.insert(0, %(here)r)
import tbfast, shapes
from conftest import Parked

item = Parked(lambda park: shapes.deep_recursion(park, 20), name="poisoned").__enter__()
original = tbfast._impl._poison_frame_for_test(item.thread.ident, 5)
out = {}
read_end, write_end = os.pipe()
for fmt in tbfast.FORMATS:
    tbfast.register(signal.SIGUSR1, write_end, format=fmt)
    signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
    out["signal-" + fmt] = os.read(read_end, 1 << 20).decode()
    out["api-" + fmt] = tbfast.format_traceback(format=fmt)
tbfast._impl._restore_frame_for_test(original)
out["restored"] = tbfast.format_traceback(format="json")
item.__exit__()
print(json.dumps(out))
"""


@needs_core
def test_poisoned_frame_is_marked_unreadable_and_the_dump_goes_on():
    result = subprocess.run([sys.executable, "-c", POISONED_WORKER % {"here": HERE}],
                            capture_output=True, timeout=60)
    assert result.returncode == 0, "the worker died (%d): %s" % (result.returncode, result.stderr[-2000:])
    out = json.loads(result.stdout)
    for how in ("signal", "api"):
        document = json.loads(out[how + "-json"])
        poisoned = [t for t in document["threads"] if t["name"] == "poisoned"][0]
        # Frames 0 to 5 are read (the link out of frame 5 is poisoned), then the marker.
        assert [(frame["file"] == "<unreadable frame>", frame["function"])
                for frame in poisoned["frames"]] == [
            (False, "wait"), (False, "wait"), (False, "park"), (False, "deep_recursion"),
            (False, "deep_recursion"), (False, "deep_recursion"), (True, None)]
        assert document["threads"][0]["name"] == "MainThread"  # the others are intact
        text = out[how + "-text"]
        assert text.count("  <unreadable frame>\n") == 1
        assert out[how + "-uwsgi"].count("filename = <unreadable frame>") == 1
    restored = json.loads(out["restored"])
    poisoned = [t for t in restored["threads"] if t["name"] == "poisoned"][0]
    assert "<unreadable frame>" not in json.dumps(poisoned)
    assert [frame["function"] for frame in poisoned["frames"]].count("deep_recursion") == 21
