"""The load and the reader of the stress tests (tests/test_stress.py, scripts/soak).

    python stress_worker.py load SOCKET_BASENAME DUMPS SUMMARY_FILE

runs the load: 64 threads that start, recurse to a random depth, run generators,
coroutines and async generators there, unwind and exit, each starting the next;
a thread running gc.collect(); tbfast's socket, two C-level signal handlers
(SIGUSR1 text, SIGUSR2 json) and the watchdog (dump_traceback_later with repeat,
and harakiri expiries) all writing GIL-free dumps.  It starts the reader in a
process of its own (`read` below), which asks for the dumps, parses every one
and writes the summary (JSON) to SUMMARY_FILE.

The parsers here (`check_text`, `check_json`, `check_uwsgi`, `split_stream`)
are the tests' definition of a well formed dump.
"""

import gc
import json
import os
import random
import re
import selectors
import signal
import subprocess
import sys
import threading
import time

if __name__ == "__main__":  # a script under PYTHONSAFEPATH=1: the kit beside it is off sys.path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workerkit import ask  # noqa: E402


def figures(name, **values):
    """One `figures:` line on stdout (pytest -s), and into $TBFAST_FIGURES when set:
    docs/robustness.md says what each one counts."""
    line = "figures: %s %s" % (name, json.dumps(values, sort_keys=True))
    print(line)
    if os.environ.get("TBFAST_FIGURES"):
        with open(os.environ["TBFAST_FIGURES"], "a") as out:
            import tbfast
            out.write("%s python=%d.%d mode=%s\n" % (line, *sys.version_info[:2], tbfast.MODE))


# ---------------------------------------------------------------- the parsers

THREAD_HEADING = (rb'(?:Current thread|Thread) 0x[0-9a-f]{16} \((?:name "[^\n]*"(?: \(kernel\))?, )?native id -?\d+'
                  rb'(?:, holds the GIL|, waiting for the GIL)?(?:, in GC)?(?:, idle)?'
                  rb'(?:, running|, sleeping(?: in [a-z0-9_]+| in syscall \d+)?)?'
                  rb'(?:, stuck for \d+\.\d{3} s)?\) \(most recent call first\):\n')
# The fallback knows a thread's name and native id only from threading, which does
# not know a thread that is still starting or already ending: then neither is shown.
UNKNOWN_THREAD_HEADING = rb'Thread 0x[0-9a-f]{16} \(most recent call first\):\n'
THREAD_BODY = (rb'(?:  Context: [^\n]*\n)?'
               rb'(?:  File "[^\n]*", line -?\d+ in [^\n]*\n(?:    [^\n]*\n)?(?:      [^\n]*\n)*'
               rb'|  \[Previous line repeated \d+ more times?\]\n'
               rb'|  <unreadable frame>\n'
               rb'|  \[C\] [^\n]*\n)*'  # C frames: with native frames asked for
               rb'(?:  <no Python frame>\n(?:  \[C\] [^\n]*\n)*)?\n')  # a C thread
TEXT_THREAD = re.compile(THREAD_HEADING + THREAD_BODY)
FALLBACK_TEXT_THREAD = re.compile(rb'(?:' + THREAD_HEADING + rb'|' + UNKNOWN_THREAD_HEADING + rb')'
                                  + THREAD_BODY)
TEXT_HEADER = re.compile(rb'tbfast dump: pid=(\d+) time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z '
                         rb'trigger=(\S+) mode=(gil|gil-free|python) threads=(\d+)'
                         rb' running=(\d+) sleeping=(\d+) idle=(\d+) waiting_gil=(\d+)'
                         rb'(?: gil_wait_ms=\d+ gil_holder=\S+)?\n')
TRUNCATED = re.compile(rb'\*\*\* tbfast: buffer full, \d+ frames in \d+ threads not shown '
                       rb'\(buffer_size=\d+\) \*\*\*\n')
# What a consistent dump adds after its threads (tbfast.rich; checked by tests/test_rich*.py).
RICH_SECTIONS = re.compile(rb'(?:Asyncio tasks|Greenlets)[ (:]')
UWSGI_HEADER = b"*** uWSGI Python tracebacker output ***\n\n"
UWSGI_FRAME = re.compile(rb'thread_id = [^\n]* filename = [^\n]* lineno = -?\d+ function = [^\n]* line = [^\n]*\n')
SKIPPED = b"tbfast: dump skipped, every dump buffer is in use\n"
UNREADABLE_TEXT = b"  <unreadable frame>\n"


class Malformed(Exception):
    pass


def check_text(data, trigger=None):
    """The text dump `data` (bytes), parsed whole: (threads, unreadable frames).
    Raises Malformed saying where it stops making sense.  The main thread comes
    first in every dump of every thread: its Python frames never go away."""
    header = TEXT_HEADER.match(data)
    if header is None:
        raise Malformed("no header line")
    if trigger is not None and header.group(2) != trigger.encode():
        raise Malformed("trigger %r, expected %r" % (header.group(2), trigger))
    position, threads, unreadable = header.end(), 0, 0
    if not re.match(rb'(?:Current thread|Thread) 0x[0-9a-f]{16} \(name "MainThread", ', data[position:]):
        headings = re.findall(rb'\n(?:Current thread|Thread) 0x[0-9a-f]{16} \((?:name "([^\n]*)", )?', data)
        raise Malformed("the main thread is not first: it is thread %s of %d" % (
            [n + 1 for n, name in enumerate(headings) if name == b"MainThread"], len(headings)))
    thread_grammar = FALLBACK_TEXT_THREAD if header.group(3) == b"python" else TEXT_THREAD
    while position < len(data):
        block = thread_grammar.match(data, position)
        if block is None:
            break
        threads += 1
        unreadable += block.group(0).count(UNREADABLE_TEXT)
        position = block.end()
    truncated = TRUNCATED.match(data, position)
    if truncated is not None:
        position = truncated.end()
    if RICH_SECTIONS.match(data, position):
        position = len(data)
    if position != len(data):
        raise Malformed("thread %d does not parse at byte %d: %r" % (threads + 1, position,
                                                                     data[position:position + 300]))
    if truncated is None and threads != int(header.group(4)):
        raise Malformed("header says threads=%s, %d thread blocks follow" % (header.group(4).decode(),
                                                                             threads))
    if sum(int(header.group(n)) for n in range(5, 9)) > int(header.group(4)):
        raise Malformed("more threads counted by state than threads=%s" % header.group(4).decode())
    return threads, unreadable


def check_json(data, trigger=None):
    """The JSON dump `data` (one line), parsed: (threads, unreadable frames)."""
    if not data.endswith(b"\n") or data.count(b"\n") != 1:
        raise Malformed("not one line")
    try:
        document = json.loads(data)
    except ValueError as error:
        raise Malformed("json.loads: %s" % error) from None
    if document.get("tbfast") != 1 or not isinstance(document.get("threads"), list):
        raise Malformed("not a tbfast document: %r" % data[:200])
    if trigger is not None and document["trigger"] != trigger:
        raise Malformed("trigger %r, expected %r" % (document["trigger"], trigger))
    if not document["threads"] or document["threads"][0].get("name") != "MainThread":
        raise Malformed("the main thread is not first: %r" % data[:400])
    unreadable = 0
    for thread in document["threads"]:
        if not isinstance(thread.get("ident"), int) or not isinstance(thread.get("frames"), list):
            raise Malformed("thread without ident or frames: %r" % (thread,))
        for frame in thread["frames"]:
            if frame.get("file") == "<unreadable frame>":
                unreadable += 1
            elif not (isinstance(frame.get("file"), str) and isinstance(frame.get("line"), int)
                      and isinstance(frame.get("function"), str)):
                raise Malformed("frame %r" % (frame,))
    return len(document["threads"]), unreadable


def check_uwsgi(data):
    """The uwsgi-format dump `data`, parsed line by line: (frame lines, unreadable frames)."""
    if not data.startswith(UWSGI_HEADER):
        raise Malformed("no uWSGI header")
    position, frames = len(UWSGI_HEADER), 0
    if not data.startswith(b"thread_id = MainThread ", position):
        raise Malformed("the main thread is not first: %r" % data[:400])
    while position < len(data):
        line = UWSGI_FRAME.match(data, position)
        if line is not None:
            frames += 1
            position = line.end()
        elif data.startswith(b"\n", position):
            position += 1
        else:
            raise Malformed("line at byte %d: %r" % (position, data[position:position + 300]))
    return frames, data.count(b"filename = <unreadable frame>")


def check(data, format, trigger=None):
    if format == "json":
        return check_json(data, trigger)
    if format == "uwsgi":
        return check_uwsgi(data)
    return check_text(data, trigger)


def split_stream(buffer):
    """Whole dumps from the front of a stream of them, text and JSON mixed:
    (dumps, rest).  A JSON dump is one line; a text dump is whole once the
    threads=N blocks its header announces have arrived.  Bytes that start no
    dump (another writer's, cut in) come out as a dump of their own, up to the
    next header, for check() to reject."""
    dumps = []
    while buffer:
        if buffer.startswith(b"{"):
            end = buffer.find(b"\n")
            if end < 0:
                break
            dumps.append(buffer[:end + 1])
            buffer = buffer[end + 1:]
            continue
        if buffer.startswith(SKIPPED):
            dumps.append(SKIPPED)
            buffer = buffer[len(SKIPPED):]
            continue
        header = TEXT_HEADER.match(buffer)
        if header is None:
            if b"\n" not in buffer and (b"tbfast dump: ".startswith(buffer[:13])
                                        or SKIPPED.startswith(buffer)):
                break  # the first line is still coming
            cut = min([at for at in (buffer.find(b"tbfast dump: ", 1), buffer.find(b'{"tbfast":', 1))
                       if at > 0] or [len(buffer)])
            dumps.append(buffer[:cut])
            buffer = buffer[cut:]
            continue
        end = header.end()
        for _ in range(int(header.group(4))):
            end = buffer.find(b"\n\n", end)
            if end < 0:
                return dumps, buffer
            end += 2
        truncated = TRUNCATED.match(buffer, end)
        if truncated is not None:
            end = truncated.end()
        dumps.append(buffer[:end])
        buffer = buffer[end:]
    return dumps, buffer


def format_of(data):
    return "json" if data.startswith(b"{") else "uwsgi" if data.startswith(b"*** uWSGI") else "text"


# ---------------------------------------------------------------- the load

THREADS = 64
MAX_DEPTH = 20


def make_load(stop, harakiri_every):
    """Starts THREADS chains of short-lived threads and a gc thread; returns the gc thread."""
    import tbfast

    def generator(n):
        for i in range(n):
            yield i
        time.sleep(0.0005)  # a dump may find the thread here, inside the generator
        yield n

    async def coroutine(n):
        return sum(generator(n))

    async def async_generator(n):
        for i in range(n):
            yield await coroutine(i)

    def drive(awaitable):
        try:
            awaitable.send(None)
        except StopIteration as done:
            return done.value
        raise RuntimeError("never suspends")

    def bottom(rng):
        garbage = [rng]
        garbage.append(garbage)  # a cycle for the gc thread
        results = list(generator(rng.randint(0, 5)))
        results.append(drive(coroutine(rng.randint(0, 5))))
        walker = async_generator(rng.randint(1, 3))
        try:
            while True:
                results.append(drive(walker.__anext__()))
        except StopAsyncIteration:
            pass
        suspended = generator(3)
        next(suspended)
        suspended.close()
        if harakiri_every and rng.randrange(harakiri_every) == 0:
            with tbfast.harakiri(0.001):  # expires: the watchdog dumps every thread
                time.sleep(0.01)
        return results

    def recurse(depth, rng):
        if depth == 0:
            return bottom(rng)
        return recurse(depth - 1, rng)

    def life(seed):
        rng = random.Random(seed)
        recurse(rng.randint(0, MAX_DEPTH), rng)
        if not stop.is_set():
            threading.Thread(target=life, args=(seed + THREADS,), daemon=True).start()

    def collect():
        while not stop.wait(0.02):
            gc.collect()

    for seed in range(THREADS):
        threading.Thread(target=life, args=(seed,), daemon=True).start()
    collector = threading.Thread(target=collect, name="gc-collect")
    collector.start()
    return collector


def pipe(size=1 << 20):
    """A pipe whose buffer holds a whole dump (F_SETPIPE_SZ: 1 MiB is the default
    /proc/sys/fs/pipe-max-size)."""
    import fcntl
    read_end, write_end = os.pipe()
    try:
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, size)
    except OSError:
        pass
    return read_end, write_end


def run_load(basename, target, summary_file):
    import tbfast
    stop = threading.Event()
    signal_text, signal_json, later, expiries = pipe(), pipe(), pipe(), pipe()
    tbfast.register(signal.SIGUSR1, signal_text[1], format="text")
    tbfast.register(signal.SIGUSR2, signal_json[1], format="json")
    path = tbfast.enable_tracebacker(basename, worker_id=1)
    tbfast.watchdog.configure(file=expiries[1], format="json", log=False, repeat=3600)
    tbfast.dump_traceback_later(0.01, repeat=True, file=later[1])
    quiet = threading.active_count()
    gc_thread = make_load(stop, harakiri_every=200)
    read_ends = (signal_text[0], signal_json[0], later[0], expiries[0])
    reader = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "read", str(os.getpid()), path, str(target),
         summary_file] + [str(fd) for fd in read_ends], pass_fds=read_ends, stdout=subprocess.PIPE)
    for fd in read_ends:
        os.close(fd)
    reader.stdout.readline()  # the reader has its dumps: wind down, then close the pipes
    tbfast.cancel_dump_traceback_later()
    stop.set()
    gc_thread.join()
    deadline = time.monotonic() + 30
    while threading.active_count() > quiet and time.monotonic() < deadline:
        time.sleep(0.01)  # the last lives end (and any harakiri dump with them)
    tbfast.unregister(signal.SIGUSR1)
    tbfast.unregister(signal.SIGUSR2)
    tbfast.disable_tracebacker()
    tbfast.watchdog.configure(file=False, log=False)
    for fd in (signal_text[1], signal_json[1], later[1], expiries[1]):
        os.close(fd)
    sys.exit(reader.wait())


# ---------------------------------------------------------------- the reader

SOURCES = ("socket", "signal:SIGUSR1", "signal:SIGUSR2", "timeout", "harakiri")
UNKNOWN_LINES = (b" line -1 in ", b" lineno = -1 ", b'"line":-1,')


class Tally:
    """Dumps seen and checked, per source, and the evidence of any malformed one."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}
        self.malformed = []

    def add(self, source, data, format, trigger=None):
        with self.lock:
            if data == SKIPPED:
                self.counts["skipped"] = self.counts.get("skipped", 0) + 1
                return
            try:
                threads, unreadable = check(data, format, trigger)
            except Malformed as error:
                self.malformed.append({"source": source, "error": str(error),
                                       "dump": data.decode("utf-8", "replace")})
                return
            if format != "uwsgi":  # whose count is of frame lines
                self.counts["fewest threads"] = min(self.counts.get("fewest threads", threads), threads)
            for what, count in ((source, 1), ("unreadable frames", unreadable),
                                ("frames at line -1", sum(map(data.count, UNKNOWN_LINES)))):
                self.counts[what] = self.counts.get(what, 0) + count

    def count(self, what):
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def total(self):
        with self.lock:
            return sum(self.counts.get(source, 0) for source in SOURCES) + len(self.malformed)


def read_socket(path, request):
    """The answer to `request`; None sends nothing and ends the request at once.  A
    request sent after the server's 10 ms is answered already: no matter."""
    return ask(path, request, timeout=30, shutdown=request is None)


def run_reader(pid, path, target, summary_file, fds):
    """Asks for dumps (signals one at a time, socket requests) until `target` dumps
    from every source together are checked, says so on stdout, then drains the
    pipes to their end and writes the summary."""
    tally = Tally()
    started = time.monotonic()
    deadline = started + float(os.environ.get("TBFAST_STRESS_SECONDS", "600"))
    json_streams = ("signal:SIGUSR2", "harakiri")
    streams = dict(zip(SOURCES[1:], map(int, fds)))
    pending = {name: b"" for name in streams}
    arrived = {name: threading.Semaphore(0) for name in streams}
    enough = threading.Event()

    def load_gone():  # a dead load is a zombie until its parent reaps it: kill() still works
        return os.getppid() != pid

    def drain():
        selector = selectors.DefaultSelector()
        for name, fd in streams.items():
            selector.register(fd, selectors.EVENT_READ, name)
        while selector.get_map():
            for key, _ in selector.select():
                name = key.data
                chunk = os.read(key.fd, 1 << 20)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                dumps, pending[name] = split_stream(pending[name] + chunk)
                for data in dumps:
                    tally.add(name, data, "json" if name in json_streams else "text", name)
                    arrived[name].release()

    def ask_sockets():
        # GIL-free walks, and one in four the default: a consistent walk, or a GIL-free one
        # after gil_wait when the load holds the GIL
        requests = [(b"gil-free text\n", "text"), (b"gil-free json\n", "json"),
                    (b"gil-free uwsgi\n", "uwsgi"), (None, "text")]
        n = 0
        while not enough.is_set():
            request, format = requests[n % len(requests)]
            n += 1
            try:
                data = read_socket(path, request)
            except OSError as error:
                if load_gone():
                    return
                data = ("%s: %s" % (type(error).__name__, error)).encode()  # malformed, below
            if format != "text" and data.startswith(b"tbfast dump: "):
                format = "text"  # the request came late: the default format, as documented
                tally.count("late requests")
            tally.add("socket", data, format, "socket" if format != "uwsgi" else None)

    drainer = threading.Thread(target=drain)
    drainer.start()
    asker = threading.Thread(target=ask_sockets)
    asker.start()
    lost, n = 0, 0
    while tally.total() < target and time.monotonic() < deadline and not load_gone():
        # One at a time: a signal still pending would absorb the next.
        name, signum = (("signal:SIGUSR1", signal.SIGUSR1), ("signal:SIGUSR2", signal.SIGUSR2))[n % 2]
        n += 1
        os.kill(pid, signum)
        if not arrived[name].acquire(timeout=10):
            lost += 1
    enough.set()
    asker.join()
    if not load_gone():
        print("enough", flush=True)
    drainer.join()  # until the load closes its ends
    summary = {"counts": tally.counts, "dumps": tally.total(), "signals sent": n, "signals lost": lost,
               "malformed": tally.malformed, "seconds": round(time.monotonic() - started, 1),
               "leftover": {name: len(data) for name, data in pending.items() if data},
               "threads": THREADS}
    with open(summary_file, "w") as out:
        json.dump(summary, out)


if __name__ == "__main__":
    if sys.argv[1] == "load":
        run_load(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        run_reader(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6:])
