"""The core's locals (src/_locals.pxi): what a GIL-free dump shows of each frame's
variables, checked against repr() of the same values and against f_locals."""

import json
import math
import sys

import pytest
from hypothesis import given, settings, strategies

import tbfast
from conftest import needs_core

pytestmark = needs_core
TYPE_NAMES_ONLY = ({1: 2}, [1], object(), 10 ** 40, 2 ** 30, 1.5j)


def dump_of_caller(format):
    """The calling function's frame from a core dump with locals."""
    data = tbfast._impl.format_dump(False, format, 1, "api", False, True).decode()
    return json.loads(data)["threads"][0]["frames"][0] if format == "json" else data


def frame_with_known_locals(a, b=2.5, *rest, password="hunter2", **options):
    nothing, yes, small, negative = None, True, 2 ** 30 - 1, -(2 ** 30 - 1)
    text, data = "it's \"quoted\"\n\tü\x00", b"\x00\xffab'"
    holder = {"key": "value"}
    cell = "captured"

    def closure():
        return cell
    return dump_of_caller("json"), dump_of_caller("text"), sys._getframe().f_locals


def readable(value):
    """Does the core show this value as repr() does (else by its type)?"""
    return type(value) in (type(None), bool, float, str, bytes) or (
        type(value) is int and abs(value) < 2 ** 30)


def test_readable_values_are_shown_as_repr_shows_them():
    document, text, truth = frame_with_known_locals(1, 3, token=7)
    shown = document["locals"]
    assert list(shown) == list(truth)  # every bound local, in f_locals order
    assert shown.pop("password") == "'********'"  # a mask word in its name: hidden whatever it is
    for name, value in shown.items():
        expected = repr(truth[name]) if readable(truth[name]) else "<%s>" % type(truth[name]).__name__
        assert value == expected, name
    assert shown["cell"] == "'captured'" and shown["rest"] == "<tuple>"
    # The text format shows the same values, a line each, after the frame's lines.
    lines = text.split("  File ")[1].splitlines()
    shown["password"] = "'********'"
    assert sorted(lines[2:2 + len(shown)]) == sorted("      %s = %s" % item for item in shown.items())


def test_values_that_need_code_to_print_show_their_type():
    for value in TYPE_NAMES_ONLY:
        assert dump_of_caller_with(value) == "<%s>" % type(value).__name__


def dump_of_caller_with(v):
    return dump_of_caller("json")["locals"]["v"]


@pytest.mark.parametrize("value", [
    0.1, 1 / 3, 1e16, 1e15, 1e-5, 1e-4, 123.456, 2.0 ** 70, 5e-324, -0.0, 0.0, math.inf, -math.inf,
    1e22, 12345678.9, 1.7976931348623157e308, 2.2250738585072014e-308, 100.0, -2.5,
    779539845543410.25])
def test_floats_as_repr(value):
    assert dump_of_caller_with(value) == repr(value)


def test_nan():
    assert dump_of_caller_with(float("nan")) == "nan"


@settings(max_examples=300, deadline=None)
@given(strategies.floats(allow_nan=False))
def test_every_float_reads_back_as_itself(value):
    assert float(dump_of_caller_with(value)) == value


@settings(max_examples=200, deadline=None)
@given(strategies.text(max_size=60) | strategies.binary(max_size=60))
def test_short_strings_and_bytes_as_repr(value):
    shown = dump_of_caller_with(value)
    if isinstance(value, str) and not value.isprintable():
        # repr escapes every unprintable character; the core only the ASCII controls.
        assert shown[0] in "'\"" and len(shown) >= len(value) + 2
    else:
        assert shown == repr(value)


def test_long_values_are_cut():
    limit = tbfast._limits.LOCAL_VALUE_LIMIT
    assert dump_of_caller_with("x" * 1000) == "'" + "x" * (limit - 3) + "...'"
    assert dump_of_caller_with(b"y" * 1000) == "b'" + "y" * limit + "'..."


def test_at_most_fifty_locals_a_frame():
    namespace = {}
    exec("def many(dump):\n    " + "; ".join("v%d = %d" % (i, i) for i in range(60))
         + "\n    return dump()", namespace)
    text = namespace["many"](lambda: tbfast._impl.format_dump(False, "text", 1, "api", False, True))
    lines = text.decode().split('  File "<string>"')[1].splitlines()
    assert lines[1] == "      dump = <function>"  # arguments come first, as in f_locals
    assert lines[2:51] == ["      v%d = %d" % (i, i) for i in range(49)]
    assert lines[51] == "      ... 11 more"


def test_uwsgi_format_has_no_locals():
    without, with_locals = [tbfast._impl.format_dump(False, "uwsgi", 0, "api", False, flag)
                            for flag in (False, True)]  # one line: the same frames
    assert with_locals == without
