"""Type stubs of tbfast's public API, the names of tbfast/__init__.py (docs/api.md).

scripts/lint checks them with mypy, and against the installed package with stubtest.
"""

from collections.abc import Iterable
from types import ModuleType
from typing import Final, Literal

from _typeshed import FileDescriptorLike

from . import sockets as sockets, watchdog as watchdog
from ._tbcore import HarakiriScope
from .watchdog import HarakiriError as HarakiriError

_Format = Literal["text", "uwsgi", "json", "faulthandler"]

__all__ = [
    "HAS_CORE", "MODE", "FALLBACK_REASON", "FORMATS", "dump_traceback", "format_traceback", "register",
    "unregister", "set_context", "get_context", "configure", "harakiri", "HarakiriError",
    "dump_traceback_later", "cancel_dump_traceback_later", "Breakpoint",
    "enable_tracebacker", "disable_tracebacker", "enable", "disable", "is_enabled",
]
__version__: Final[str]

MIN_BUFFER_SIZE: Final[int]
HAS_CORE: Final[bool]
MODE: Final[Literal["core", "python"]]
FALLBACK_REASON: Final[str | None]
FORMATS: Final[tuple[_Format, ...]]

# The implementation chosen at import: the C core or the pure-Python fallback.
_impl: ModuleType

_Native = bool | Literal["all"]

def dump_traceback(file: FileDescriptorLike | None = None, all_threads: bool = True, *,
                   format: _Format = "text", locals: bool = False, native: _Native = False) -> None: ...
def format_traceback(all_threads: bool = True, *, format: _Format = "text", locals: bool = False,
                     native: _Native = False) -> str: ...
def register(signum: int, file: FileDescriptorLike | None | Literal[False] = None, all_threads: bool = True,
             chain: bool = False, *, format: _Format = "text", log: bool = False,
             native: _Native = False) -> None: ...
def unregister(signum: int) -> bool: ...
def enable(file: FileDescriptorLike | None | Literal[False] = None, all_threads: bool = True, *,
           format: _Format = "text") -> None: ...
def disable() -> bool: ...
def is_enabled() -> bool: ...
def set_context(text: str | None) -> None: ...
def get_context() -> str | None: ...
def configure(*, buffer_size: int | None = None, gil_wait: float | None = None,
              mask: Iterable[str] | None = None) -> None: ...

# A class: harakiri(30) is a scope, a context manager and a decorator (the core's
# HarakiriScope, or the fallback's, which has the same face).
harakiri = HarakiriScope

class Breakpoint(Exception): ...

def dump_traceback_later(timeout: float, repeat: bool = False, file: FileDescriptorLike | None = None,
                         exit: bool = False) -> None: ...
def cancel_dump_traceback_later() -> None: ...
def enable_tracebacker(basename: str, worker_id: int | None = None, *, mode: int = 0o600,
                       format: _Format = "text") -> str | None: ...
def disable_tracebacker() -> bool: ...
