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


# Threads start and exit as fast as they can while another process (or a signal)
# asks for dumps: an exiting thread frees its state under the GIL-free walk.
CHURN_WORKER = r"""
import os, signal, subprocess, sys, threading, time
import tbfast
how, dumps, here = sys.argv[1], int(sys.argv[2]), sys.argv[4]
stop = threading.Event()

def churn():
    while not stop.is_set():
        thread = threading.Thread(target=lambda: None)
        thread.start()
        thread.join()

churners = [threading.Thread(target=churn) for _ in range(4)]
for thread in churners:
    thread.start()
well_formed = 0
if how == "socket":
    path = tbfast.enable_tracebacker(sys.argv[3], worker_id=1)
    reader = subprocess.run([sys.executable, "-c", '''
import sys
sys.path.insert(0, sys.argv[3])
from workerkit import ask
good = 0
for _ in range(int(sys.argv[2])):
    data = ask(sys.argv[1], shutdown=True)
    if data.startswith(b"tbfast dump: ") and data.endswith(b"\\n\\n"):
        good += 1
    else:
        sys.stderr.write("malformed dump: %r\\n" % data[-400:])
print(good)
''', path, str(dumps), here], capture_output=True, timeout=120)
    well_formed = int(reader.stdout)
    sys.stderr.write(reader.stderr.decode())
else:
    read_end, write_end = os.pipe()
    tbfast.register(signal.SIGUSR1, write_end)
    for _ in range(dumps):
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
        data = os.read(read_end, 1 << 20)
        while not data.endswith(b"\n\n"):
            data += os.read(read_end, 1 << 20)
        well_formed += data.startswith(b"tbfast dump: ")
stop.set()
for thread in churners:
    thread.join()
print(well_formed)
"""


@needs_core
@pytest.mark.parametrize("how", ["socket", "signal"])
def test_dumps_while_threads_start_and_exit(how, tmp_path):
    dumps = 1000
    result = subprocess.run(
        [sys.executable, "-c", CHURN_WORKER, how, str(dumps), str(tmp_path / "tb."), HERE],
        capture_output=True, timeout=180)
    assert result.returncode == 0, "the worker died (%d): %s" % (result.returncode, result.stderr[-2000:])
    assert int(result.stdout) == dumps, result.stderr.decode()[-3000:]
