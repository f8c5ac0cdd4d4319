"""What tbfast_autostart.pth runs as the interpreter starts, when the environment
asks for it: TBFAST_FAULTHANDLER, the crash handler (as PYTHONFAULTHANDLER turns on
faulthandler's; its value may name a format, else text), and TBFAST_TRACEBACKER,
a tracebacker socket (tbfast.sockets).  A failure is one line on stderr, never an
exception: a program must start whether or not tbfast can."""

import os

import tbfast
from tbfast.sockets import _autostart as _start_tracebacker, _warn

__all__ = ["run"]


def run():
    wanted = os.environ.get("TBFAST_FAULTHANDLER")
    if wanted:
        try:
            tbfast.enable(format=wanted if wanted in tbfast.FORMATS else "text")
        except Exception as error:  # noqa: BLE001
            _warn("crash handler not enabled (TBFAST_FAULTHANDLER=%s): %s" % (wanted, error))
    if os.environ.get("TBFAST_TRACEBACKER"):
        _start_tracebacker()
