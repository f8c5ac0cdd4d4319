"""Code shapes whose live frames the dump must read exactly as traceback does.

Each shape takes `park`, a callable that blocks, and calls it from deep inside
the construct it is named after.
"""

import asyncio
import functools


def nested(park):
    def outer():
        return middle()

    def middle():
        return inner()

    def inner():
        return park()

    return outer()


def generator(park):
    def produce():
        yield 1
        park()
        yield 2

    return list(produce())


def coroutine_sent(park):
    async def inner():
        park()

    async def outer():
        await inner()

    coro = outer()
    try:
        coro.send(None)
    except StopIteration:
        pass


def coroutine_in_loop(park):
    async def inner():
        park()

    async def outer():
        await asyncio.gather(inner())

    asyncio.run(outer())


def async_generator(park):
    async def produce():
        park()
        yield 1

    async def consume():
        return [item async for item in produce()]

    asyncio.run(consume())


def lambda_call(park):
    return (lambda: park())()


def comprehension(park):
    return [park() for _ in range(1)]


def generator_expression(park):
    return sum(1 for _ in range(1) if park() is None)


def decorated(park):
    def logged(function):
        @functools.wraps(function)
        def wrapper(*args):
            return function(*args)
        return wrapper

    @logged
    def target():
        return park()

    return target()


def class_body(park):
    class Body:
        parked = park()

    return Body


def except_block(park):
    try:
        raise ValueError("boom")
    except ValueError:
        park()


def finally_block(park):
    try:
        pass
    finally:
        park()


def with_block(park):
    class Manager:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            park()

    with Manager():
        pass


def deep_recursion(park, depth=60):
    if depth == 0:
        return park()
    return deep_recursion(park, depth - 1)


def methods(park):
    class Service:
        @classmethod
        def create(cls):
            return cls().handle()

        def handle(self):
            return self.helper()

        @staticmethod
        def helper():
            return park()

    return Service.create()


def exec_string(park):
    namespace = {"park": park}
    exec(compile("def run():\n    park()\nrun()\n", "<string>", "exec"), namespace)


SHAPES = [nested, generator, coroutine_sent, coroutine_in_loop, async_generator, lambda_call,
          comprehension, generator_expression, decorated, class_body, except_block,
          finally_block, with_block, deep_recursion, methods, exec_string]
