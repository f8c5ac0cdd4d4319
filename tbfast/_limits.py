"""Constants shared by every layer: the formats, and the bounds of the dumps.

The core reads the bounds at import into its preallocated state, so it and the
pure-Python fallback cut strings at the same place.
"""

FILENAME_LIMIT = 500   # bytes of UTF-8, as faulthandler's MAX_STRING_LENGTH
FUNCTION_LIMIT = 200
SOURCE_LIMIT = 500
NAME_LIMIT = 200
CONTEXT_LIMIT = 500
RECURSIVE_CUTOFF = 3   # as traceback.StackSummary: 3 identical lines, then a count

FORMATS = ("text", "uwsgi", "json")  # what every layer writes and accepts
REQUEST_OPTIONS = ("locals", "gil-free")  # the socket request's other words


def check_format(format):
    if format not in FORMATS:
        raise ValueError("unknown format %r: use one of %s" % (format, ", ".join(FORMATS)))


# The default buffer holds 100 threads x 100 frames of about 200 bytes each.
DEFAULT_BUFFER_SIZE = 2 * 1024 * 1024

# Substrings, matched case-insensitively, of variable names whose values dumps hide.
DEFAULT_MASK = ("password", "passwd", "secret", "token", "authorization", "cookie",
                "api_key", "apikey", "credential", "private_key", "session")

# How long a socket dump tries to take the GIL before it falls back to the GIL-free walk:
# five of CPython's 5 ms switch intervals.  A holder running Python code lets the GIL go
# within one once another thread asks for it; one that has not after five is in C (a
# stuck worker's usual case), and its dump should not wait longer to come GIL-free.
DEFAULT_GIL_WAIT = 0.025

# Locals (opt-in): the first MAX_LOCALS of a frame, then "... N more"; names and
# reprs cut as the other strings are.
MAX_LOCALS = 50
LOCAL_NAME_LIMIT = 200
LOCAL_VALUE_LIMIT = 500
