"""The supervisor side: pools of worker processes.

::

    async with open_pool("myapp.model:Model", size=4) as pool:
        result = await pool.execute("predict", {"x": 1}, timeout=5.0)
        async with pool.stream("generate", {"prompt": "hi"}) as chunks:
            async for chunk in chunks:
                ...

``start_pool`` is the same pool for synchronous code.
"""

from pypit._decorate import publish as _publish
from pypit.pool._config import PoolConfig as PoolConfig
from pypit.pool._config import RayWorkers as RayWorkers
from pypit.pool._map import Map as Map
from pypit.pool._pool import Pool as Pool
from pypit.pool._pool import PoolStatus as PoolStatus
from pypit.pool._pool import SessionInfo as SessionInfo
from pypit.pool._pool import open_pool as open_pool
from pypit.pool._status import WorkerStatus as WorkerStatus
from pypit.pool._stream import Stream as Stream
from pypit.pool._sync import SyncMap as SyncMap
from pypit.pool._sync import SyncPool as SyncPool
from pypit.pool._sync import SyncStream as SyncStream
from pypit.pool._sync import start_pool as start_pool
from pypit.pool._tools import Parameter as Parameter
from pypit.pool._tools import ToolDescription as ToolDescription

__all__ = [
    "Map",
    "Parameter",
    "Pool",
    "PoolConfig",
    "PoolStatus",
    "RayWorkers",
    "SessionInfo",
    "Stream",
    "SyncMap",
    "SyncPool",
    "SyncStream",
    "ToolDescription",
    "WorkerStatus",
    "open_pool",
    "start_pool",
]

_publish(globals(), __all__, __name__)
