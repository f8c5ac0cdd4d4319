"""WSGI middleware under a real Werkzeug server on 127.0.0.1."""

import http.client
import json
import threading
import time

import pytest

import tbfast
from tbfast import watchdog
from tbfast.wsgi import HarakiriMiddleware

serving = pytest.importorskip("werkzeug.serving")


def app(environ, start_response):
    if environ["PATH_INFO"].startswith("/slow"):
        time.sleep(0.6)
    if environ["PATH_INFO"] == "/dump":
        body = tbfast.format_traceback(format="json").encode()
    else:
        body = b"ok"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


@pytest.fixture
def server(tbfast_log):
    watchdog.configure(file=False, repeat=10.0)
    httpd = serving.make_server("127.0.0.1", 0, HarakiriMiddleware(app, timeout=0.3),
                                threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_port, tbfast_log
    httpd.shutdown()
    thread.join(10)


def get(port, path, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    return response.status, response.read()


def test_slow_request_is_logged_with_its_context_others_are_not(server):
    port, records = server
    slow = threading.Thread(target=get, args=(port, "/slow?x=1", {"X-Request-Id": "abc"}))
    slow.start()
    time.sleep(0.1)
    statuses = [get(port, "/fast")[0] for _ in range(20)]
    status, body = get(port, "/dump")
    slow.join(10)
    time.sleep(0.3)
    assert statuses == [200] * 20 and status == 200
    contexts = {thread["context"] for thread in json.loads(body)["threads"]}
    assert {"GET /slow?x=1 id=abc", "GET /dump"} <= contexts
    assert len(records.records) == 1
    message = records.records[0].getMessage()
    assert "Context: GET /slow?x=1 id=abc" in message and "stuck for" in message
    assert "in app" in message


def test_deadline_and_context_end_with_the_request(server):
    port, records = server
    assert get(port, "/fast") == (200, b"ok")
    time.sleep(0.5)  # longer than the timeout: a deadline left armed would fire now
    assert records.records == []
    status, body = get(port, "/dump")
    contexts = [thread["context"] for thread in json.loads(body)["threads"]]
    assert contexts.count("GET /dump") == 1 and contexts.count("GET /fast") == 0


def test_the_context_line_never_shows_a_livebp_token(server):
    port, records = server
    token = "-".join(("the", "token"))  # so that no source line the dump shows holds it
    get(port, "/slow?x=1&livebp=tbfast.wsgi:1&livebp_token=%s&y=2" % token)
    (record,) = records.wait_for(1)
    message = record.getMessage()
    assert "Context: GET /slow?x=1&livebp=tbfast.wsgi:1&y=2\n" in message
    assert token not in message


def test_a_nul_in_a_request_is_escaped_in_its_context_line(server):
    port, records = server
    get(port, "/slow%00?x=%00")
    (record,) = records.wait_for(1)
    assert "Context: GET /slow\\x00?x=%00\n" in record.getMessage()


def test_bad_timeout_fails_at_setup():
    with pytest.raises(ValueError, match="positive number of seconds"):
        HarakiriMiddleware(app, timeout=0)
