"""perf's control FIFOs, so `benchmarks/profile` samples only the dumps themselves.

`perf record -D -1 --control fifo:CTL,ACK` starts with sampling off; the child
of bench_dump.py turns it on just before each dump and off just after, so what
runs between dumps (--between, to empty the CPU caches) is not in the profile.
"""

import contextlib
import os

CTL_ENV = "TBFAST_BENCH_PERF_CTL"
ACK_ENV = "TBFAST_BENCH_PERF_ACK"


class PerfControl:
    def __init__(self, ctl_path=None, ack_path=None):
        self._ctl = os.open(ctl_path, os.O_WRONLY) if ctl_path else None
        self._ack = os.open(ack_path, os.O_RDONLY) if ack_path else None

    @classmethod
    def from_environment(cls):
        return cls(os.environ.get(CTL_ENV), os.environ.get(ACK_ENV))

    def _send(self, command):
        if self._ctl is None:
            return
        os.write(self._ctl, command + b"\n")
        if self._ack is not None:
            os.read(self._ack, 16)  # perf answers "ack"

    @contextlib.contextmanager
    def sampling(self):
        self._send(b"enable")
        try:
            yield
        finally:
            self._send(b"disable")
