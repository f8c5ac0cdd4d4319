"""write() calls per dump, counted by strace on a separate small run per tool.

The child (bench_dump.py --child) parks the workload, points the tool at
/dev/null through a fd of its own (SINK_FD) and dumps a few times; strace
follows every thread, and only write() calls on SINK_FD are counted.
"""

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

SINK_FD = 213
BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_dump.py")


@dataclass
class WriteCount:
    tool: str
    dumps: int
    writes: int
    frames: int  # frames of one dump, as the tool shows them

    @property
    def per_dump(self):
        return self.writes / self.dumps


def count_writes(tool, threads, depth, dumps=3):
    with tempfile.TemporaryDirectory() as scratch:
        trace = os.path.join(scratch, "strace.out")
        child = subprocess.run(
            ["strace", "-f", "-qq", "-e", "trace=write", "-o", trace,
             sys.executable, BENCH, "--child", tool, "--threads", str(threads),
             "--depth", str(depth), "--dumps", str(dumps)],
            check=True, stdout=subprocess.PIPE, text=True)
        frames = int(child.stdout.split()[-1])
        with open(trace) as lines:
            pattern = re.compile(r"\bwrite\(%d," % SINK_FD)
            writes = sum(1 for line in lines if pattern.search(line))
    return WriteCount(tool, dumps, writes, frames)


def strace_version():
    out = subprocess.run(["strace", "-V"], stdout=subprocess.PIPE, text=True).stdout
    return out.splitlines()[0] if out else "strace"
