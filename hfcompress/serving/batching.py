"""Dynamic batching: inputs of requests that arrive close together run as one padded batch.

Requests put their inputs in a bounded queue and await them. One asyncio task forms batches: it
runs what is queued at once, unless another request is in flight that has not queued its inputs
yet (announced with :meth:`DynamicBatcher.request`, e.g. still sending its body): then it waits
until ``max_batch_size`` inputs wait or the oldest has waited ``max_wait_ms``. So a lone request
never waits for company that cannot come, and requests that queue while a batch runs form the next.
When more than a batch waits, it takes the oldest input with the inputs closest to it in length,
so that padding stays small and no input waits behind ever newer ones. The model runs in a worker
thread, so the event loop keeps accepting requests (and queueing the next batch) meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence


class QueueFull(Exception):
    """The queue cannot take a request's inputs now (or the server is shutting down): answer 503."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class _Item:
    value: Any
    request: int  # which submit call the input came with
    top_k: Optional[int]
    length: int
    arrived: float
    future: asyncio.Future


class DynamicBatcher:
    """Queue of inputs in front of ``run_batch(values, top_ks) -> results`` (one result per value).

    ``length(value)`` orders inputs for grouping; ``on_batch(size, seconds)`` is told of every batch run,
    ``on_depth(inputs)`` of every change in the number of inputs waiting.
    Start it with :meth:`start` inside the running event loop, stop it with :meth:`stop` (which runs
    everything still queued first).
    """

    def __init__(
        self, run_batch: Callable[[list, list], list], max_batch_size: int, max_wait_ms: float, max_queue: int,
        length: Callable[[Any], int] = len, on_batch: Optional[Callable[[int, float], None]] = None,
        on_depth: Optional[Callable[[int], None]] = None,
    ):
        self.run_batch, self.length, self.on_batch, self.on_depth = run_batch, length, on_batch, on_depth
        self.max_batch_size, self.max_wait_s, self.max_queue = max_batch_size, max_wait_ms / 1000.0, max_queue
        self._pending_items: list[_Item] = []
        self._wakeup: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None
        self._executor: Optional[ThreadPoolExecutor] = None
        self._closing = False
        self._requests_in_flight = 0  # announced by request(): arrived, not yet answered
        self._request_ids = itertools.count()
        self._batch_seconds = 0.05  # running estimate of one batch's time, for Retry-After

    @property
    def depth(self) -> int:
        """Inputs waiting for the model (not counting the batch running now)."""
        return len(self._pending)

    @property
    def _pending(self) -> list[_Item]:
        return self._pending_items

    @_pending.setter
    def _pending(self, items: list[_Item]) -> None:
        self._pending_items = items
        if self.on_depth is not None:
            self.on_depth(len(items))

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hfcompress-inference")
        self._task = asyncio.create_task(self._form_batches(), name="hfcompress-batcher")

    async def stop(self) -> None:
        """Stop taking inputs, run those queued, then end the batching task and its thread."""
        self._closing = True
        if self._task is not None:
            self._wakeup.set()
            await self._task
            self._executor.shutdown(wait=True)
            self._task = None

    @contextlib.contextmanager
    def request(self):
        """Announce a request from its arrival until it is answered, so that a batch waits for it while it is still being received."""
        self._requests_in_flight += 1
        try:
            yield
        finally:
            self._requests_in_flight -= 1
            if self._wakeup is not None:  # one fewer to wait for (it may have been refused before queueing anything)
                self._wakeup.set()

    def _more_coming(self) -> bool:
        """Whether a request in flight has not queued its inputs yet: only then can waiting add to the batch."""
        return self._requests_in_flight > len({item.request for item in self._pending})

    def retry_after_s(self) -> int:
        return max(1, math.ceil(self.depth / self.max_batch_size * self._batch_seconds))

    async def submit(self, values: Sequence[Any], top_k: Optional[int] = None) -> list:
        """The results of ``values``, once the batches holding them have run; raises QueueFull when it cannot queue them."""
        if self._closing or self._task is None:
            raise QueueFull("the server is shutting down: retry on another replica", self.retry_after_s())
        if self.depth + len(values) > self.max_queue:
            raise QueueFull(f"the queue is full ({self.depth} of {self.max_queue} inputs waiting): retry later", self.retry_after_s())
        loop = asyncio.get_running_loop()
        now = loop.time()
        request = next(self._request_ids)
        items = [_Item(v, request, top_k, self.length(v), now, loop.create_future()) for v in values]
        self._pending = self._pending + items
        self._wakeup.set()
        return list(await asyncio.gather(*(item.future for item in items)))

    async def _form_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._pending = [item for item in self._pending if not item.future.done()]  # requests whose client went away
            if not self._pending:
                if self._closing:
                    return
                await self._wait(None)
                continue
            waited_enough = loop.time() - self._pending[0].arrived >= self.max_wait_s
            if len(self._pending) < self.max_batch_size and not waited_enough and not self._closing and self._more_coming():
                await self._wait(self._pending[0].arrived + self.max_wait_s - loop.time())
                continue
            await self._run(self._take_batch())

    async def _wait(self, timeout: Optional[float]) -> None:
        """Until an input arrives, stop is asked, or ``timeout`` seconds pass."""
        self._wakeup.clear()
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def _take_batch(self) -> list[_Item]:
        """The oldest input and up to ``max_batch_size - 1`` others of the closest lengths; the rest stay queued."""
        size = self.max_batch_size
        if len(self._pending) <= size:
            batch, self._pending = self._pending, []
            return batch
        by_length = sorted(self._pending, key=lambda item: item.length)
        oldest = by_length.index(self._pending[0])
        starts = range(max(0, oldest - size + 1), min(oldest, len(by_length) - size) + 1)
        start = min(starts, key=lambda s: by_length[s + size - 1].length - by_length[s].length)
        batch = by_length[start:start + size]
        chosen = {id(item) for item in batch}
        self._pending = [item for item in self._pending if id(item) not in chosen]
        return batch

    async def _run(self, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            results = await loop.run_in_executor(self._executor, self.run_batch, [i.value for i in batch], [i.top_k for i in batch])
        except Exception as error:  # noqa: BLE001 - the requests of this batch fail with it; the server keeps serving
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        seconds = loop.time() - started
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * seconds
        if self.on_batch is not None:
            self.on_batch(len(batch), seconds)
        for item, result in zip(batch, results):
            if not item.future.done():
                item.future.set_result(result)
