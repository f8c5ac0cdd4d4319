"""Bounds shared by the C core and the pure-Python fallback.

The core reads these at import into its preallocated state, so both
implementations cut strings at the same place.
"""

FILENAME_LIMIT = 500   # bytes of UTF-8, as faulthandler's MAX_STRING_LENGTH
FUNCTION_LIMIT = 200
SOURCE_LIMIT = 500
NAME_LIMIT = 200
CONTEXT_LIMIT = 500
RECURSIVE_CUTOFF = 3   # as traceback.StackSummary: 3 identical lines, then a count

# The default buffer holds 100 threads x 100 frames of about 200 bytes each.
DEFAULT_BUFFER_SIZE = 2 * 1024 * 1024
