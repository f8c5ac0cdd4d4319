# Stage 3, the formatters, continued: local variables in GIL-free dumps: only what can be read without running code,
# as `py-spy dump --locals` shows it.  None, bools, ints of one internal digit,
# floats, str and bytes are shown as repr() would show them (cut to
# LOCAL_VALUE_LIMIT with "..."); anything else by its type, as <dict>.  Names
# that contain a mask word (tbfast._limits.DEFAULT_MASK, case-insensitively)
# show MASKED_VALUE instead.  Everything here is async-signal-safe.

cdef enum:
    LOCALS_PER_FRAME = 50         # then "... N more"; = _limits.MAX_LOCALS
    LOCAL_VALUE_LIMIT = 500       # bytes of a str's or bytes' contents; = _limits.LOCAL_VALUE_LIMIT
    LOCAL_TEXT_BYTES = LOCAL_VALUE_LIMIT * 4 + 16  # escaped, quoted
    MASK_BYTES = 1024
    NAME_BYTES = 200              # = _limits.LOCAL_NAME_LIMIT

cdef const char *MASKED_VALUE = b"'********'"  # as tbfast.saferepr.MASKED
cdef char locals_mask[MASK_BYTES]   # lowercase words, each ended by a NUL; an empty one ends the list
cdef long double TEN = 10.0


cdef bint set_locals_mask(words) except -1:
    """The mask words, from Python (GIL held); read by every dump that shows locals."""
    cdef bytes packed = b"".join(word.lower().encode() + b"\0" for word in words if word) + b"\0"
    if len(packed) > MASK_BYTES:
        raise ValueError("tbfast: the mask words take more than %d bytes" % MASK_BYTES)
    memcpy(locals_mask, <const char *>packed, len(packed))
    return True


cdef bint is_masked(const char *name, Py_ssize_t n) noexcept nogil:
    # Signal safe: does a mask word occur in name, ASCII case ignored?
    cdef const char *word = locals_mask
    cdef Py_ssize_t length, start, i
    while word[0] != 0:
        length = strlen(word)
        for start in range(n - length + 1):
            i = 0
            while i < length and ascii_lower(name[start + i]) == word[i]:
                i += 1
            if i == length:
                return True
        word += length + 1
    return False


cdef inline char ascii_lower(char c) noexcept nogil:
    # Signal safe.
    return c + 32 if b'A' <= c <= b'Z' else c


cdef void emit_quoted(Dumper *out, const char *data, Py_ssize_t n, bint as_bytes) noexcept nogil:
    """Signal safe: str or bytes contents as repr() quotes and escapes them; UTF-8
    passes through for str, bytes outside printable ASCII become \\xNN."""
    cdef char quote = b"'"
    cdef char escape[4]
    cdef unsigned char c
    cdef Py_ssize_t i
    if memchr(data, b"'", n) != NULL and memchr(data, b'"', n) == NULL:
        quote = b'"'
    if as_bytes:
        emit_str(out, b"b")
    emit(out, &quote, 1)
    for i in range(n):
        c = <unsigned char>data[i]
        if c == b'\\' or c == <unsigned char>quote:
            escape[0] = b'\\'
            escape[1] = <char>c
            emit(out, escape, 2)
        elif c == b'\n':
            emit_str(out, b"\\n")
        elif c == b'\r':
            emit_str(out, b"\\r")
        elif c == b'\t':
            emit_str(out, b"\\t")
        elif c < 0x20 or c == 0x7f or (as_bytes and c > 0x7f):
            escape[0] = b'\\'
            escape[1] = b'x'
            escape[2] = b"0123456789abcdef"[c >> 4]
            escape[3] = b"0123456789abcdef"[c & 15]
            emit(out, escape, 4)
        else:
            emit(out, <char *>&c, 1)
    emit(out, &quote, 1)


cdef long double power_of_ten(int exponent) noexcept nogil:
    # Signal safe: 10**exponent (exponent >= 0) by squaring, in long double.
    cdef long double result = 1, base = TEN
    while exponent:
        if exponent & 1:
            result *= base
        base *= base
        exponent >>= 1
    return result


cdef long double scaled(long double value, int exponent) noexcept nogil:
    # Signal safe: value * 10**exponent.
    return value * power_of_ten(exponent) if exponent >= 0 else value / power_of_ten(-exponent)


cdef int first_digit_exponent(double value) noexcept nogil:
    """Signal safe: the decimal exponent of a positive finite value's first digit,
    estimated from its binary exponent (log10(2) = 0.30103), then corrected."""
    cdef unsigned long long bits
    memcpy(&bits, &value, sizeof(bits))
    cdef int binary = <int>((bits >> 52) & 0x7ff) - 1023
    cdef int exponent = (binary * 30103 - (99999 if binary < 0 else 0)) // 100000
    while scaled(value, -exponent) >= 10:
        exponent += 1
    while scaled(value, -exponent) < 1:
        exponent -= 1
    return exponent


cdef void emit_float(Dumper *out, double value) noexcept nogil:
    """Signal safe: a float as repr() writes it: the fewest significant digits that
    read back as the same double (in long double arithmetic, so the last digit may
    rarely differ from repr's), positional from 1e-4 to 1e16, else with an exponent."""
    cdef char digits[24]
    cdef unsigned long long mantissa = 0
    cdef int precision, exponent, count, i, point
    cdef long double mantissa_scaled, fraction
    if value != value:
        emit_str(out, b"nan")
        return
    if value < 0 or (value == 0 and 1 / value < 0):
        emit_str(out, b"-")
        value = -value
    if value == 0:
        emit_str(out, b"0.0")
        return
    if value > 1.7976931348623157e308:
        emit_str(out, b"inf")
        return
    exponent = first_digit_exponent(value)
    for precision in range(1, 18):
        mantissa_scaled = scaled(value, precision - 1 - exponent)
        mantissa = <unsigned long long>mantissa_scaled
        fraction = mantissa_scaled - mantissa
        if fraction > 0.5 or (fraction == 0.5 and mantissa & 1):  # ties to even, as repr
            mantissa += 1
        if <double>scaled(<long double>mantissa, exponent - precision + 1) == value:
            break
    count = format_unsigned(digits, mantissa)
    exponent += count - precision  # rounding up may have added a digit
    while count > 1 and digits[count - 1] == b'0':
        count -= 1
    if -4 <= exponent < 16:
        if exponent < 0:
            emit_str(out, b"0.")
            for i in range(-exponent - 1):
                emit_str(out, b"0")
            emit(out, digits, count)
            return
        point = exponent + 1
        if count <= point:
            emit(out, digits, count)
            for i in range(point - count):
                emit_str(out, b"0")
            emit_str(out, b".0")
        else:
            emit(out, digits, point)
            emit_str(out, b".")
            emit(out, digits + point, count - point)
        return
    emit(out, digits, 1)
    if count > 1:
        emit_str(out, b".")
        emit(out, digits + 1, count - 1)
    emit_str(out, b"e-" if exponent < 0 else b"e+")
    if -10 < exponent < 10:
        emit_str(out, b"0")
    emit_decimal(out, exponent if exponent >= 0 else -exponent)


cdef void emit_local_value(Dumper *out, Dumper *d, PyObject *value) noexcept nogil:
    """Signal safe: a value as repr() shows it, for the types read without running
    code; <type name> for the others.  d.string is the scratch space."""
    cdef int kind = tb_value_kind(value)
    cdef long long number
    cdef Py_ssize_t n
    cdef const char *name
    if kind == TB_VALUE_NONE:
        emit_str(out, b"None")
    elif kind == TB_VALUE_BOOL:
        emit_str(out, b"True" if value == Py_True else b"False")
    elif kind == TB_VALUE_INT and tb_small_int(value, &number):
        emit_decimal(out, number)
    elif kind == TB_VALUE_FLOAT:
        emit_float(out, PyFloat_AS_DOUBLE(value))
    elif kind == TB_VALUE_STR:
        n = encode_bounded(value, LOCAL_VALUE_LIMIT, d.string)
        emit_quoted(out, d.string, n if n > 0 else 0, False)
    elif kind == TB_VALUE_BYTES:
        n = PyBytes_GET_SIZE(value)
        emit_quoted(out, PyBytes_AS_STRING(value), min(n, LOCAL_VALUE_LIMIT), True)
        if n > LOCAL_VALUE_LIMIT:
            emit_str(out, b"...")
    else:
        name = tb_type_name(value)
        emit_str(out, b"<")
        emit(out, name, strnlen(name, LOCAL_VALUE_LIMIT))
        emit_str(out, b">")


cdef void emit_locals(Dumper *d, tb_frame *frame, PyCodeObject *code) noexcept nogil:
    """Signal safe: a frame's bound locals, after its lines: `      name = value` lines
    in the text format, a "locals" object's members in JSON's."""
    cdef char text[LOCAL_TEXT_BYTES]
    cdef Dumper value
    cdef PyObject *bound
    cdef Py_ssize_t name_length
    cdef int i, shown = 0, count = tb_code_local_count(code)
    cdef char name[NAME_BYTES]
    value.buf = text
    value.capacity = LOCAL_TEXT_BYTES
    for i in range(count):
        bound = tb_frame_local(frame, code, i)
        if bound == NULL:
            continue
        if shown == LOCALS_PER_FRAME:
            if d.format == FORMAT_TEXT:
                emit_str(d, b"      ... ")
                emit_decimal(d, bound_locals(frame, code, i, count))
                emit_str(d, b" more\n")
            break
        name_length = encode_bounded(tb_code_local_name(code, i), NAME_BYTES, name)
        if name_length <= 0:
            continue
        value.length = 0
        value.full = False
        if is_masked(name, name_length):
            emit_str(&value, MASKED_VALUE)
        else:
            emit_local_value(&value, d, bound)
        if d.format == FORMAT_TEXT:
            emit_str(d, b"      ")
            emit_printable(d, name, name_length)
            emit_str(d, b" = ")
            emit_printable(d, text, value.length)
            emit_str(d, b"\n")
        else:
            if shown:
                emit_str(d, b",")
            emit_json_string(d, name, name_length)
            emit_str(d, b":")
            emit_json_string(d, text, value.length)
        shown += 1


cdef int bound_locals(tb_frame *frame, PyCodeObject *code, int start, int count) noexcept nogil:
    # Signal safe: how many of locals start..count-1 are bound.
    cdef int i, bound = 0
    for i in range(start, count):
        if tb_frame_local(frame, code, i) != NULL:
            bound += 1
    return bound

