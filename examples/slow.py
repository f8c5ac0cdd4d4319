"""The classic slow app of uWSGI's tracebacker page, plus a request that holds the GIL.

    GET /          sleeps 60 s five calls deep (dormi5 -> ... -> dormi)
    GET /regex     backtracks catastrophically in the regex engine, holding the GIL
"""

import re
import time


def dormi():
    time.sleep(60)


def dormi2():
    dormi()


def dormi3():
    dormi2()


def dormi4():
    dormi3()


def dormi5():
    dormi4()


def backtrack():
    return re.match(r"(a+)+$", "a" * 34 + "b")  # minutes in C, GIL held


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    if environ["PATH_INFO"] == "/regex":
        backtrack()
    else:
        dormi5()
    return [b"hello\n"]


app = application
