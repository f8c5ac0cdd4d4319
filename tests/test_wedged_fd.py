"""A blocking pipe whose reader stopped holds no dumping path for good: a signal's
dump gives up, harakiri's abort and dump_traceback_later's exit still come, and
the watchdog goes on serving the other deadlines."""

import subprocess
import sys

import pytest

# Each worker gets `wedged`: the write end of a blocking pipe, full to the brim,
# whose read end stays open and is never read, as a stderr pipe whose reader stopped.
WORKER = r"""
import os, signal, sys, threading, time
import tbfast
from tbfast import watchdog

def say(text):
    os.write(1, text.encode() + b"\n")

unread, wedged = os.pipe()
os.set_blocking(wedged, False)
try:
    for _ in range(1000):
        os.write(wedged, b"x" * 65536)
except BlockingIOError:
    pass
os.set_blocking(wedged, True)
assert os.get_blocking(wedged)
"""

SCENARIOS = {
    "signal": (r"""
tbfast.register(signal.SIGUSR1, wedged)
for attempt in range(2):
    signal.raise_signal(signal.SIGUSR1)
    time.sleep(0.01)  # the fallback's handler runs between bytecodes
    say("signal dump %d gave up" % attempt)
""", 0, b"signal dump 0 gave up\nsignal dump 1 gave up\n"),
    "harakiri abort": (r"""
watchdog.configure(file=wedged, log=False)
with tbfast.harakiri(1, action="abort"):
    time.sleep(60)
say("not aborted")
""", -9, b""),
    "dump_traceback_later exit": (r"""
tbfast.dump_traceback_later(1, file=wedged, exit=True)
time.sleep(60)
say("not exited")
""", 1, b""),
    "later deadlines": (r"""
watchdog.configure(file=wedged, log=False)
def stuck():
    with tbfast.harakiri(0.5):
        time.sleep(60)
threading.Thread(target=stuck, daemon=True).start()
try:
    with tbfast.harakiri(1.5, action="raise"):
        for _ in range(6000):
            time.sleep(0.01)
except tbfast.HarakiriError:
    say("raised")
""", 0, b"raised\n"),
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_wedged_pipe_holds_no_dumping_path(scenario):
    script, returncode, said = SCENARIOS[scenario]
    # The timeout only tells a hang from an end: each scenario ends in about 6 s.
    result = subprocess.run([sys.executable, "-c", WORKER + script], capture_output=True,
                            timeout=45)
    assert (result.returncode, result.stdout) == (returncode, said), result.stderr[-2000:]
