"""ASGI middleware: each request's task is timed, not the loop's thread."""

import asyncio

import pytest

from tbfast.asgi import HarakiriMiddleware


@pytest.fixture
def records(tbfast_log):
    return tbfast_log.records


async def slow_handler(seconds):
    await asyncio.sleep(seconds)


async def app(scope, receive, send):
    await slow_handler(0.5 if scope["path"] == "/slow" else 0)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def request(path, query=b""):
    return {"type": "http", "method": "GET", "path": path, "query_string": query}


async def call(middleware, scope):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await middleware(scope, receive, send)
    return sent


def test_slow_task_is_logged_fast_ones_are_not(records):
    middleware = HarakiriMiddleware(app, timeout=0.2)

    async def main():
        return await asyncio.gather(call(middleware, request("/slow", b"id=3")),
                                    *[call(middleware, request("/fast")) for _ in range(10)])

    responses = asyncio.run(main())
    assert all(sent[0]["status"] == 200 for sent in responses)
    assert len(records) == 1
    message = records[0].getMessage()
    assert message.startswith("harakiri: request GET /slow?id=3 stuck for 0.2")
    assert "in slow_handler" in message and "await asyncio.sleep(seconds)" in message


def test_raise_cancels_only_the_slow_request(records):
    middleware = HarakiriMiddleware(app, timeout=0.2, action="raise")

    async def main():
        return await asyncio.gather(call(middleware, request("/slow")), call(middleware, request("/fast")),
                                    return_exceptions=True)

    slow, fast = asyncio.run(main())
    assert isinstance(slow, asyncio.CancelledError)
    assert fast[0]["status"] == 200 and len(records) == 1


def test_lifespan_passes_through(records):
    seen = []

    async def lifespan_app(scope, receive, send):
        seen.append(scope["type"])

    asyncio.run(HarakiriMiddleware(lifespan_app, timeout=0.1)({"type": "lifespan"}, None, None))
    assert seen == ["lifespan"] and records == []
