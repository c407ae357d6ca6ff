"""CPU work (image decode, pHash) off the gateway's event loop, in a bounded thread pool.

Why: the gateway is one asyncio loop; decoding a 6000x6000 JPEG on it stalls every other request
(cheap vector / item-id queries included) for hundreds of milliseconds. Pillow and numpy release
the GIL while decoding / resizing, so a small thread pool runs this work in parallel with the loop.
The pool is bounded twice: `workers` threads, and at most `max_pending` jobs admitted (running +
waiting); past that a caller gets RESOURCE_EXHAUSTED at once instead of queueing without limit, so
memory held by queued photos stays bounded too. `inline=True` runs the work on the loop (the old
behaviour; kept only as the benchmark's baseline).
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from grpc import StatusCode

from visual_search.gateway import validation as V
from visual_search.gateway.phash import phash

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class ImageInfo:
    """What the gateway needs of a decoded photo (the pixels are dropped in the worker)."""

    width: int
    height: int
    phash: int


def image_info(data: bytes, with_phash: bool = True) -> ImageInfo:
    """Decode (ApiError INVALID_ARGUMENT on bad input) and hash; runs in a pool thread."""
    rgb = V.decode_image(data)
    h, w = rgb.shape[:2]
    return ImageInfo(int(w), int(h), phash(rgb) if with_phash else 0)


class CpuPool:
    """Bounded thread pool for CPU-heavy request work; see the module docstring."""

    def __init__(self, workers: int = 2, max_pending: int = 16, inline: bool = False) -> None:
        self.workers = max(1, workers)
        self.max_pending = max(1, max_pending)
        self.inline = inline
        self._pending = 0
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    @property
    def pending(self) -> int:
        return self._pending

    def _exec(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="gateway-cpu")
        return self._executor

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """fn(*args) on a pool thread; RESOURCE_EXHAUSTED when `max_pending` jobs are admitted."""
        if self.inline:
            return fn(*args, **kwargs)
        with self._lock:
            if self._pending >= self.max_pending:
                raise V.ApiError(
                    StatusCode.RESOURCE_EXHAUSTED,
                    f"gateway busy: {self._pending} photos already being decoded (limit "
                    f"{self.max_pending}); retry with backoff",
                )
            self._pending += 1
        try:
            fut = asyncio.get_running_loop().run_in_executor(
                self._exec(), functools.partial(fn, *args, **kwargs)
            )
        except BaseException:
            self._release()
            raise
        # the slot is freed when the thread is done with the photo, even if the caller gave up
        fut.add_done_callback(lambda _f: self._release())
        return await asyncio.shield(fut)

    def _release(self) -> None:
        with self._lock:
            self._pending -= 1

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


_POOLS: dict[tuple[int, int, bool], CpuPool] = {}


def shared_pool(workers: int, max_pending: int, inline: bool) -> CpuPool:
    """One pool per gateway process and setting (generations share it, so the bound is global)."""
    key = (workers, max_pending, inline)
    if key not in _POOLS:
        _POOLS[key] = CpuPool(workers, max_pending, inline)
    return _POOLS[key]
