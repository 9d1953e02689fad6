# Type stubs for parmapper's public API (PEP 561; see py.typed).
import pickle
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, Literal, Optional, Protocol, TypeVar, Union, overload

_T = TypeVar("_T")
_R = TypeVar("_R")

__version__: str
__all__: list[str]
CPU_COUNT: int

class _Bar(Protocol):
    def update(self, n: int = ...) -> Any: ...
    def close(self) -> Any: ...

_Progress = Union[bool, str, type, _Bar, Callable[[int], Any], None]
_Mode = Literal["raise", "return", "proc"]

class _Parmap(Protocol):
    def __call__(
        self,
        fun: Callable[..., _R],
        seq: Iterable[Any],
        N: Optional[int] = ...,
        Nt: int = ...,
        chunksize: Optional[int] = ...,
        ordered: bool = ...,
        daemon: bool = ...,
        progress: _Progress = ...,
        total: Optional[int] = ...,
        args: tuple[Any, ...] | list[Any] = ...,
        kwargs: Optional[Mapping[str, Any]] = ...,
        star: Optional[bool] = ...,
        kwstar: bool = ...,
        exception: Optional[_Mode] = ...,
        executor: Any = ...,
        retries: int = ...,
        timeout: Optional[float] = ...,
        max_tasks_per_worker: Optional[int] = ...,
        max_memory: Optional[int | str] = ...,
        input_thread: bool = ...,
    ) -> Iterator[_R]: ...
    map: "_Parmap"
    imap: "_Parmap"
    def close(self, *args: Any, **kwargs: Any) -> None: ...

parmap: _Parmap
parmapper: _Parmap

def set_start_method(*args: Any, **kwargs: Any) -> None: ...

class _AsyncResult(Generic[_T]):
    def ready(self) -> bool: ...
    def successful(self) -> bool: ...
    def wait(self, timeout: Optional[float] = ...) -> None: ...
    def get(self, timeout: Optional[float] = ...) -> _T: ...

class Pool:
    def __init__(
        self,
        N: Optional[int] = ...,
        Nt: int = ...,
        initializer: Optional[Callable[..., Any]] = ...,
        initargs: Iterable[Any] = ...,
        maxtasksperchild: Optional[int] = ...,
        processes: Optional[int] = ...,
        **defaults: Any,
    ) -> None: ...
    def map(self, func: Callable[[_T], _R], iterable: Iterable[_T],
            chunksize: Optional[int] = ..., **options: Any) -> list[_R]: ...
    def imap(self, func: Callable[[_T], _R], iterable: Iterable[_T],
             chunksize: Optional[int] = ..., **options: Any) -> Iterator[_R]: ...
    def imap_unordered(self, func: Callable[[_T], _R], iterable: Iterable[_T],
                       chunksize: Optional[int] = ..., **options: Any) -> Iterator[_R]: ...
    def starmap(self, func: Callable[..., _R], iterable: Iterable[Iterable[Any]],
                chunksize: Optional[int] = ..., **options: Any) -> list[_R]: ...
    def apply(self, func: Callable[..., _R], args: Iterable[Any] = ...,
              kwds: Optional[Mapping[str, Any]] = ...) -> _R: ...
    def map_async(self, func: Callable[[_T], _R], iterable: Iterable[_T],
                  chunksize: Optional[int] = ...,
                  callback: Optional[Callable[[list[_R]], Any]] = ...,
                  error_callback: Optional[Callable[[BaseException], Any]] = ...,
                  **options: Any) -> _AsyncResult[list[_R]]: ...
    def starmap_async(self, func: Callable[..., _R],
                      iterable: Iterable[Iterable[Any]],
                      chunksize: Optional[int] = ...,
                      callback: Optional[Callable[[list[_R]], Any]] = ...,
                      error_callback: Optional[Callable[[BaseException], Any]] = ...,
                      **options: Any) -> _AsyncResult[list[_R]]: ...
    def apply_async(self, func: Callable[..., _R], args: Iterable[Any] = ...,
                    kwds: Optional[Mapping[str, Any]] = ...,
                    callback: Optional[Callable[[_R], Any]] = ...,
                    error_callback: Optional[Callable[[BaseException], Any]] = ...,
                    ) -> _AsyncResult[_R]: ...
    def close(self) -> None: ...
    def terminate(self) -> None: ...
    def join(self) -> None: ...
    def __enter__(self) -> "Pool": ...
    def __exit__(self, *exc: Any) -> None: ...

class ReturnProcess(Generic[_R]):
    target: Callable[..., _R]
    exception: _Mode
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    name: str
    daemon: bool
    def __init__(self, target: Callable[..., _R], exception: _Mode = ...,
                 args: Iterable[Any] = ..., kwargs: Optional[Mapping[str, Any]] = ...,
                 name: Optional[str] = ..., daemon: Optional[bool] = ...,
                 group: None = ...) -> None: ...
    def start(self) -> "ReturnProcess[_R]": ...
    def is_alive(self) -> bool: ...
    def join(self, timeout: Optional[float] = ...) -> Optional[_R]: ...

class ParEval:
    fun: Callable[..., Any]
    n_chunks: Optional[int]
    n_eval: Optional[int]
    n_min: int
    def __init__(self, fun: Callable[..., Any], n_chunks: Optional[int] = ...,
                 n_eval: Optional[int] = ..., n_min: int = ...,
                 **parmap_options: Any) -> None: ...
    def chunk_count(self, n: int) -> int: ...
    def __call__(self, X: Any) -> Any: ...

class ParmapperError(RuntimeError): ...

class PoolTerminatedError(ParmapperError): ...

class WorkerDiedError(ParmapperError):
    pid: Optional[int]
    exitcode: Optional[int]
    signal: Optional[int]
    seq_indices: list[int]
    seq_index: int
    remote_traceback: Optional[str]

class WorkerMemoryError(ParmapperError, MemoryError):
    seq_index: int
    limit: int
    rss: int

class RemoteError(ParmapperError):
    type_name: Optional[str]
    remote_message: Optional[str]
    def __init__(self, message: str, type_name: Optional[str] = ...,
                 remote_message: Optional[str] = ...) -> None: ...

class RemoteTraceback(Exception):
    tb: str
    def __init__(self, tb: str) -> None: ...

class ItemShapeError(TypeError):
    seq_index: int

class ItemPicklingError(ParmapperError, pickle.PicklingError): ...
class ResultPicklingError(ParmapperError, pickle.PicklingError):
    type_name: Optional[str]
