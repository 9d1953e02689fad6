"""parmapper: the simple, robust and fast way to map a function in parallel.

Workers are forked and inherit the function, so lambdas, closures and local
objects just work; only items and results cross process boundaries.  The
engine (processes, shared-memory rings, scheduling, ordering and crash
handling) is written in C.

>>> import parmapper
>>> list(parmapper.parmap(lambda x: x * x, range(5)))
[0, 1, 4, 9, 16]
"""
import sys

if sys.platform == "win32":  # pragma: no cover
    raise ImportError(
        "parmapper needs fork(): it runs on Linux (and on macOS, best effort), "
        "not on Windows")

from ._api import CPU_COUNT, parmap, parmapper, set_start_method
from ._compat import ParEval, ReturnProcess
from ._pool import Pool, PoolTerminatedError
from ._core import ItemShapeError
from . import _worker  # imported with the package, not by the first map
from ._errors import (
    ItemPicklingError,
    ParmapperError,
    RemoteError,
    RemoteTraceback,
    ResultPicklingError,
    WorkerDiedError,
    WorkerMemoryError,
)

__version__ = "0.1.0"

__all__ = [
    "parmap",
    "parmapper",
    "CPU_COUNT",
    "set_start_method",
    "Pool",
    "PoolTerminatedError",
    "ReturnProcess",
    "ParEval",
    "ParmapperError",
    "WorkerDiedError",
    "WorkerMemoryError",
    "RemoteError",
    "RemoteTraceback",
    "ItemShapeError",
    "ItemPicklingError",
    "ResultPicklingError",
    "__version__",
]
