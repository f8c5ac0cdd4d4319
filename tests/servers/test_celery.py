"""tbfast.celery against a real Celery prefork worker: the stack of a task stuck in
a GIL-holding C call, at the soft time limit (SIGUSR1) and at the hard one (SIGTERM,
before billiard's SIGKILL).  The broker is kombu's filesystem transport in the
test's directory: no network, no broker process.

The truth: the line of TASKS marked "# stuck:", and the task id Celery returns.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from serverkit import budget, parse_dumps  # noqa: F401 - budget is a fixture
from workerkit import worker_env

pytestmark = pytest.mark.servers
pytest.importorskip("celery")

TASKS = '''
import itertools, os
from celery import Celery
import tbfast.celery

HERE = os.path.dirname(os.path.abspath(__file__))
QUEUE = os.path.join(HERE, "queue")
app = Celery("tasks", broker="filesystem://")
app.conf.update(broker_transport_options={"data_folder_in": QUEUE, "data_folder_out": QUEUE},
                broker_connection_retry_on_startup=True, task_ignore_result=True,
                worker_prefetch_multiplier=1)
tbfast.celery.install()


@app.task(soft_time_limit=2, time_limit=5)
def stuck_in_c():
    with open(os.path.join(HERE, "started"), "w") as file:
        file.write(str(os.getpid()))
    return sum(itertools.repeat(1, 10 ** 12))  # stuck: the GIL held in C
'''


@pytest.fixture
def workdir():
    directory = tempfile.mkdtemp(prefix="tbc", dir="/tmp")
    os.mkdir(os.path.join(directory, "queue"))
    with open(os.path.join(directory, "tasks.py"), "w") as file:
        file.write(TASKS)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def stuck_line():
    return next(number for number, line in enumerate(TASKS.splitlines(), 1) if "# stuck:" in line)


def test_soft_and_hard_time_limits_dump_the_stuck_task(workdir, budget):
    log_path = os.path.join(workdir, "worker.log")
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--pool", "prefork",
             "--concurrency", "1", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
             "--without-heartbeat"],
            cwd=workdir, env=worker_env(PYTHONPATH=workdir), stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def worker_log():
        with open(log_path, "rb") as file:
            return file.read().decode("utf-8", "replace")

    try:
        budget.wait_for(lambda: "ready." in worker_log(), 30, "the worker to start\n" + worker_log())
        task_id = subprocess.run(
            [sys.executable, "-c", "import tasks; print(tasks.stuck_in_c.delay().id)"],
            cwd=workdir, env=worker_env(PYTHONPATH=workdir), stdout=subprocess.PIPE,
            check=True, timeout=budget.left(30)).stdout.decode().strip()
        started = os.path.join(workdir, "started")
        budget.wait_for(lambda: os.path.exists(started), 20, "the task to start\n" + worker_log())
        with open(started) as file:
            child = int(file.read())

        def both_dumps():
            triggers = {dump.trigger: dump for dump in parse_dumps(worker_log())
                        if dump.pid == child and dump.complete}
            if {"signal:SIGUSR1", "signal:SIGTERM"} <= set(triggers):
                return triggers
            return None
        dumps = budget.wait_for(both_dumps, 20, "both time-limit dumps\n" + worker_log())
        for trigger in ("signal:SIGUSR1", "signal:SIGTERM"):
            threads = [thread for thread in dumps[trigger].threads
                       if thread.context == "celery task tasks.stuck_in_c id=%s" % task_id]
            assert len(threads) == 1, worker_log()
            thread = threads[0]
            assert thread.current and thread.holds_gil
            assert thread.frames[0] == (os.path.join(workdir, "tasks.py"), stuck_line(), "stuck_in_c")
        log = worker_log()
        assert log.index("trigger=signal:SIGUSR1") < log.index("trigger=signal:SIGTERM")
        budget.wait_for(lambda: "Hard time limit (5" in worker_log(), 15,
                        "billiard's hard time limit\n" + worker_log())
    finally:
        try:
            os.killpg(worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        worker.wait(10)
