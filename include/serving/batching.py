"""Dynamic server-side batching: concurrent requests share one forward pass.

Worker threads (one per core) run the model. A request parsed by the package's ``input_fn`` is
queued as a :class:`Job`; a worker takes the oldest job, waits for its model's gate (how many
forward passes of that model may run at once: 1 for torch, which spreads one pass over every
core; one per core for single-threaded onnxruntime sessions), adds every job already waiting (up
to ``max_batch_size`` reviews in all) and - while more requests are arriving (received, not yet
queued) - waits up to ``max_wait_ms`` for them. It then calls ``predict_fn`` ONCE on the
concatenated reviews (the handler sorts them by length so each chunk pads to its own longest
review) and hands every job its slice of the prediction. One worker collects at a time, so
batches never interleave.

Why wait only while requests are arriving: at concurrency 1 nothing else is coming, so a
fixed wait would be pure latency (a lone request runs at once - the c1 fast path); under load,
requests pile up during each forward pass and the next batch takes them without waiting at
all. Jobs of different model versions (a swap in progress) never share a batch: each job keeps
the slot it was parsed with.

The prediction is split generically: every list value with one entry per review is sliced,
other values are copied (our handler's ``label_ids``/``probabilities`` are lists, the rest
scalars). A handler whose data is not ``{"texts": [...]}`` is run one request at a time.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("reviews.endpoint")


class BatchingConfigError(ValueError):
    """A batching setting out of range."""


@dataclass
class Job:
    """One request waiting for its share of a forward pass."""

    slot: Any  # the ModelSlot the request was parsed with (read once by the request)
    data: Any  # what input_fn returned
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def size(self) -> int:
        texts = self.data.get("texts") if isinstance(self.data, dict) else None
        return len(texts) if isinstance(texts, list) else 1

    @property
    def batchable(self) -> bool:
        return isinstance(self.data, dict) and isinstance(self.data.get("texts"), list)


def split_prediction(prediction: Any, sizes: list[int]) -> list[Any]:
    """Cut a prediction over ``sum(sizes)`` reviews into one prediction per request."""
    total = sum(sizes)
    if not isinstance(prediction, dict):
        raise TypeError(f"predict_fn returned {type(prediction).__name__}; batching needs a dict")
    parts, start = [], 0
    for size in sizes:
        parts.append({k: (v[start:start + size] if isinstance(v, list) and len(v) == total else v)
                      for k, v in prediction.items()})
        start += size
    return parts


class Batcher:
    """The worker threads that run queued requests through ``predict_fn`` in batches.

    ``on_batch(reviews, requests, seconds)`` is called after each forward pass (metrics);
    ``arriving()`` says how many requests are received but not yet queued. A job's slot may
    carry ``gate`` (a semaphore held around each forward pass of that model); ``lock`` is the
    gate of slots without one. ``workers`` threads run batches (at most ``gate``'s count at once).
    """

    def __init__(self, max_batch_size: int = 32, max_wait_ms: float = 5.0,
                 on_batch: Callable[[int, int, float], None] | None = None,
                 arriving: Callable[[], int] | None = None, lock: threading.Lock | None = None,
                 workers: int = 1) -> None:
        if not 1 <= int(max_batch_size) <= 1024:
            raise BatchingConfigError(f"max_batch_size={max_batch_size}: must be in 1..1024 (1 = no batching)")
        if not 0 <= float(max_wait_ms) <= 1000:
            raise BatchingConfigError(f"max_wait_ms={max_wait_ms}: must be in 0..1000")
        if not 1 <= int(workers) <= 256:
            raise BatchingConfigError(f"workers={workers}: must be in 1..256")
        self.max_batch_size, self.max_wait_s = int(max_batch_size), float(max_wait_ms) / 1000.0
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._held: Job | None = None  # taken from the queue but left for the next batch
        self._on_batch = on_batch or (lambda *_: None)
        self._arriving = arriving or (lambda: 0)
        self._lock = lock or threading.Lock()
        self._collecting = threading.Lock()  # one worker forms a batch at a time
        self._threads = [threading.Thread(target=self._run, name=f"batcher-{i}", daemon=True)
                         for i in range(int(workers))]
        for thread in self._threads:
            thread.start()

    def depth(self) -> int:
        """Requests queued and not yet in a forward pass."""
        return self._queue.qsize() + (1 if self._held else 0)

    async def submit(self, slot: Any, data: Any) -> Any:
        """Queue one parsed request; resolves to its own prediction (or raises predict_fn's error)."""
        loop = asyncio.get_running_loop()
        job = Job(slot, data, loop, loop.create_future())
        self._queue.put(job)
        return await job.future

    def close(self) -> None:
        """Stop the workers after the jobs already queued."""
        self._queue.put(None)  # each worker that sees it puts it back for the next one
        for thread in self._threads:
            thread.join(timeout=30)

    # ------------------------------------------------------------ worker
    def _take(self, timeout: float | None) -> Job | None:
        if self._held is not None:
            job, self._held = self._held, None
            return job
        return self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()

    def _collect(self, first: Job) -> list[Job]:
        batch, size = [first], first.size
        if not first.batchable:
            return batch
        deadline = time.monotonic() + self.max_wait_s
        while size < self.max_batch_size:
            try:
                job = self._take(0)
            except queue.Empty:
                # wait only for requests that are already on their way (see the module doc)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._arriving() <= 0:
                    break
                try:
                    job = self._take(min(remaining, 0.002))
                except queue.Empty:
                    continue
            if job is None or not job.batchable or job.slot is not first.slot or size + job.size > self.max_batch_size:
                self._held = job  # starts (or, for None, stops after) the next batch
                if job is None:
                    self._held = None
                    self._queue.put(None)
                break
            batch.append(job)
            size += job.size
        return batch

    def _run(self) -> None:
        while True:
            with self._collecting:
                first = self._take(None)
                if first is None:
                    self._queue.put(None)  # stop the other workers too
                    return
                # the gate first: jobs that arrive while this model's passes are all busy join this batch
                gate = getattr(first.slot, "gate", None) or self._lock
                gate.acquire()
                try:
                    batch = self._collect(first)
                except BaseException:
                    gate.release()
                    raise
            try:
                self._predict(batch)
            finally:
                gate.release()

    def _predict(self, batch: list[Job]) -> None:
        slot = batch[0].slot
        started = time.monotonic()
        try:
            if len(batch) == 1:
                results = [slot.handler.predict_fn(batch[0].data, slot.model)]
            else:
                texts = [t for job in batch for t in job.data["texts"]]
                merged = slot.handler.predict_fn({**batch[0].data, "texts": texts, "single": False}, slot.model)
                results = split_prediction(merged, [job.size for job in batch])
                for job, part in zip(batch, results, strict=True):
                    if isinstance(part, dict) and "single" in part:
                        part["single"] = bool(job.data.get("single"))
        except Exception as exc:  # noqa: BLE001 - every request of the batch gets the model's error
            for job in batch:
                _deliver(job, _set_exception, exc)
            return
        finally:
            self._on_batch(sum(job.size for job in batch), len(batch), time.monotonic() - started)
        for job, result in zip(batch, results, strict=True):
            _deliver(job, _set_result, result)


def _deliver(job: Job, setter: Callable[[asyncio.Future, Any], None], value: Any) -> None:
    try:
        job.loop.call_soon_threadsafe(setter, job.future, value)
    except RuntimeError:  # the event loop is gone (server shutting down): nobody waits for it
        logger.warning("dropped the answer of a request whose event loop has closed")


def _set_result(future: asyncio.Future, value: Any) -> None:
    if not future.done():  # the client may have gone away and the request been cancelled
        future.set_result(value)


def _set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
