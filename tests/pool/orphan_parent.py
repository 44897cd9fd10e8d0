"""A parent process for the no-orphans tests: opens a pool on the backend named by its
argument (``asyncio`` by default), has its tools start processes, reports them, waits.

It prints one line of JSON: the workers' pids, and for each call of ``spawn_escapers`` the
pids of a child in the worker's group, of a child that called ``setsid()`` and of a daemon.
"""

from __future__ import annotations

import json
import sys
import time

from pypit.pool import start_pool

backend = sys.argv[1] if len(sys.argv) > 1 else "asyncio"
with start_pool("tests.adapters:Echo", size=2, status_interval=0, backend=backend) as pool:
    workers = list(pool.workers().values())
    started = [pool.execute("spawn_escapers") for _ in range(2)]
    print(json.dumps({"workers": workers, "started": started}), flush=True)
    sys.stdin.readline()
    time.sleep(60)
