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

# Substrings, matched case-insensitively, of the variable names and dict keys whose
# values dumps hide (tbfast.configure(mask=...) and TBFAST_MASK change the list).
# Wide on purpose: "auth" hides an `author` too, which costs less than a leak.
DEFAULT_MASK = ("password", "passwd", "pwd", "passphrase", "secret", "token", "auth", "bearer",
                "jwt", "cookie", "session", "csrf", "api_key", "apikey", "access_key",
                "credential", "creds", "private_key", "privkey", "dsn", "database_url")

# How long a socket dump tries to take the GIL before it falls back to the GIL-free walk.
DEFAULT_GIL_WAIT = 0.05

# Locals (opt-in): the first MAX_LOCALS of a frame, then "... N more"; names and
# reprs cut as the other strings are.
MAX_LOCALS = 50
LOCAL_NAME_LIMIT = 200
LOCAL_VALUE_LIMIT = 500
