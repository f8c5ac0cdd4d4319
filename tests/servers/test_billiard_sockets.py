"""The tracebacker's sockets in Celery's billiard pool: each child takes the slot of
its pool index plus one, the parent keeping 0 as uWSGI's master does."""

import json
import subprocess
import sys

import pytest

# tmp: a fixture, taken by name.
from workerkit import tmp, worker_env  # noqa: F401

pytestmark = pytest.mark.servers  # billiard comes with Celery, in the servers stage's venv

BILLIARD_SCRIPT = r'''
import json, sys
import billiard
from tbfast import sockets

def where(_):
    now = sockets.current()
    return now.worker_id, now.source, now.pid

if __name__ == "__main__":
    sockets.enable_tracebacker(sys.argv[1], 0)   # the pool's parent takes 0, as uWSGI's master
    with billiard.Pool(2) as pool:
        seen = set()
        for _ in range(200):
            seen.update(pool.map(where, range(4), chunksize=1))
            if len({pid for _, _, pid in seen}) == 2:
                break
    print(json.dumps(sorted(seen)))
'''


def test_billiard_children_take_pool_index_plus_one(tmp):
    pytest.importorskip("billiard")
    with open(tmp + "/pool.py", "w") as file:
        file.write(BILLIARD_SCRIPT)
    result = subprocess.run([sys.executable, tmp + "/pool.py", tmp + "/tb."], env=worker_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert [(worker_id, source) for worker_id, source, _ in seen] == [
        (1, "billiard"), (2, "billiard")]

