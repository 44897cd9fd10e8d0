"""A parent process for the no-orphans test: opens a pool, reports its processes, waits."""

from __future__ import annotations

import json
import sys
import time

from pypit.pool import start_pool

with start_pool("tests.adapters:Echo", size=2, status_interval=0) as pool:
    workers = list(pool.workers().values())
    children = [pool.execute("spawn_child") for _ in range(2)]
    print(json.dumps({"workers": workers, "children": children}), flush=True)
    sys.stdin.readline()
    time.sleep(60)
