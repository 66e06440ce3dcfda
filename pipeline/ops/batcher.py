"""Dynamic micro-batching for `snackloc serve`: concurrent requests share one model call.

Each request puts its images on an asyncio queue and awaits their rows of the result. One
loop takes what is queued (up to ``max_batch`` images), waits at most ``max_wait_ms`` for
more when the batch is not full, and runs the model on one worker thread, so the event
loop keeps accepting and decoding requests meanwhile. While the model runs, the next batch
gathers in the queue: under load batches fill without waiting, and a lone request waits
only ``max_wait_ms``. The model's batched throughput is what serving can reach.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from pipeline.model.answers import split_rows

Infer = Callable[[np.ndarray], dict[str, np.ndarray]]  # a batch → the model's named outputs
Row = dict[str, np.ndarray]  # one image's slice of every output


@dataclass
class BatchStats:
    """Counters for the metrics endpoint."""

    batches: int = 0
    images: int = 0
    failures: int = 0
    model_seconds: float = 0.0
    sizes: dict[int, int] = field(default_factory=dict)  # batch size → how many batches


class MicroBatcher:
    """Gathers images from concurrent callers into batches for ``infer``."""

    def __init__(self, infer: Infer, max_batch: int = 32, max_wait_ms: float = 5.0) -> None:
        self.infer = infer
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.stats = BatchStats()
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[Row]]] = asyncio.Queue()
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start the batching loop (call inside the running event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop the loop; callers still waiting get an error rather than hang."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError("the server is stopping"))
        self._model_thread.shutdown(wait=True)

    async def predict(self, arrays: list[np.ndarray]) -> list[Row]:
        """Each image's outputs (its ``Row``), computed in whatever batches form."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in arrays]
        for array, future in zip(arrays, futures, strict=True):
            self._queue.put_nowait((array, future))
        return list(await asyncio.gather(*futures))

    async def _next_batch(self) -> list[tuple[np.ndarray, asyncio.Future[Row]]]:
        items = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(items) < self.max_batch:
            if not self._queue.empty():  # what queued during the last model call: no wait
                items.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                items.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return items

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._next_batch()
            batch = np.stack([array for array, _ in items])
            started = loop.time()
            try:
                out = await loop.run_in_executor(self._model_thread, self.infer, batch)
            except Exception as exc:  # a failed batch fails its requests, not the server
                self.stats.failures += 1
                for _, future in items:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self._count(len(items), loop.time() - started)
            for (_, future), row in zip(items, split_rows(out), strict=True):
                if not future.done():  # a client that went away cancelled its future
                    future.set_result(row)

    def _count(self, size: int, seconds: float) -> None:
        self.stats.batches += 1
        self.stats.images += size
        self.stats.model_seconds += seconds
        self.stats.sizes[size] = self.stats.sizes.get(size, 0) + 1
