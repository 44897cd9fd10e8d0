"""A program for the Ctrl-C tests: a pool with a long call in flight.

Arguments: the pool -- ``start_pool`` (blocking) or ``open_pool`` (async, run by
``anyio.run``) -- the backend, the call -- ``record`` (it writes a line to the file named by
the last argument, then sleeps for a minute) or ``freeze`` (its worker stops itself, as a
worker stuck where only SIGKILL reaches it) -- and that file. The program prints its
workers' pids as one line of JSON, then makes the call; with ``start_pool`` it prints
``interrupted`` when Ctrl-C raises KeyboardInterrupt out of the call, and leaves the pool's
block with it.
"""

from __future__ import annotations

import json
import signal
import sys
from typing import Any

import anyio

from pypit.pool import open_pool, start_pool

# Ctrl-C raises KeyboardInterrupt even if this program was started with SIGINT ignored, as
# a shell starts a job in the background.
signal.signal(signal.SIGINT, signal.default_int_handler)

api, backend, call, path = sys.argv[1:5]
ARGS: dict[str, Any] = {"path": path, "tag": "started", "seconds": 60}
OPTIONS: dict[str, Any] = {"size": 2, "status_interval": 0}


async def run_async() -> None:
    async with open_pool("tests.adapters:Echo", **OPTIONS) as pool:
        print(json.dumps(list(pool.workers().values())), flush=True)
        await pool.execute(call, ARGS if call == "record" else None)


if api == "open_pool":
    anyio.run(run_async, backend=backend)
else:
    with start_pool("tests.adapters:Echo", backend=backend, **OPTIONS) as pool:
        print(json.dumps(list(pool.workers().values())), flush=True)
        try:
            pool.execute(call, ARGS if call == "record" else None)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            raise
