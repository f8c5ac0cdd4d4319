"""The public API as docs/api.md shows it, for mypy only (scripts/lint): never run.

Each call is one the docs make; assert_type pins what it gives, and each
`type: ignore[...]` is a misuse the stubs must reject (warn_unused_ignores fails
the check when one is accepted).
"""

import signal
import sys
from typing import Literal, assert_type

import tbfast


def documented_calls() -> None:
    tbfast.register(signal.SIGUSR1)
    tbfast.register(signal.SIGUSR1, sys.stderr, chain=True, format="json")
    tbfast.register(signal.SIGUSR1, False, log=True)
    tbfast.register(signal.SIGABRT, 2)
    assert_type(tbfast.unregister(signal.SIGUSR1), bool)
    tbfast.enable(False, format="json")
    assert_type(tbfast.format_traceback(native="all"), str)
    tbfast.dump_traceback(2, native=True)
    assert_type(tbfast.is_enabled(), bool)
    assert_type(tbfast.disable(), bool)

    tbfast.dump_traceback()
    tbfast.dump_traceback(sys.stderr, all_threads=False, format="uwsgi")
    tbfast.dump_traceback(2, locals=True)
    assert_type(tbfast.format_traceback(), str)
    assert_type(tbfast.format_traceback(format="json", locals=True), str)

    tbfast.set_context("GET /orders/42 id=7f3a")
    tbfast.set_context(None)
    assert_type(tbfast.get_context(), str | None)
    tbfast.configure(buffer_size=4 * 1024 * 1024)
    tbfast.configure(gil_wait=0.025)
    tbfast.configure(gil_wait=0)

    path = tbfast.enable_tracebacker("/tmp/tbsocket.")
    assert_type(path, str | None)
    tbfast.enable_tracebacker("@app.", worker_id=3, mode=0o600, format="json")
    assert_type(tbfast.disable_tracebacker(), bool)

    tbfast.dump_traceback_later(5.0, repeat=True, file=sys.stderr, exit=False)
    tbfast.cancel_dump_traceback_later()

    assert_type(tbfast.HAS_CORE, bool)
    assert_type(tbfast.MODE, Literal["core", "python"])
    assert_type(tbfast.FALLBACK_REASON, str | None)
    for name in tbfast.FORMATS:
        tbfast.format_traceback(format=name)


def harakiri_scopes() -> None:
    with tbfast.harakiri(30):
        pass
    deadline = tbfast.harakiri(30, "raise")
    with deadline as entered:
        assert_type(entered, tbfast.harakiri)

    @tbfast.harakiri(30, action="abort")
    def handle(request: str) -> int:
        return len(request)

    assert_type(handle("GET /"), int)
    try:
        pass
    except tbfast.HarakiriError:
        pass
    except tbfast.Breakpoint:
        pass


def misuses() -> None:
    tbfast.format_traceback(format="xml")  # type: ignore[arg-type]
    tbfast.dump_traceback(format="html")  # type: ignore[arg-type]
    tbfast.register("SIGUSR1")  # type: ignore[arg-type]
    tbfast.set_context(42)  # type: ignore[arg-type]
    tbfast.configure(1 << 20)  # type: ignore[call-arg]
    tbfast.harakiri(30, action="explode")  # type: ignore[arg-type]
    tbfast.enable_tracebacker("/tmp/tb.", 1, 0o600)  # type: ignore[call-arg]
    tbfast.dump_traceback("stderr")  # type: ignore[arg-type]
