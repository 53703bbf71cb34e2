"""A bounded thread pool that shares its threads fairly between concurrent callers.

``CloudWatchWriter.write`` hands the pool one task per stream. With a plain FIFO pool, a call
with thousands of new streams (each waiting for CreateLogStream, throttled at about 50/s on
AWS) would queue ahead of every later call: another tenant's one-stream write waited behind it
for the whole minute. Here each ``run`` is a batch of its own: the pool's threads take one
task from each batch in turn (round robin), and the calling thread works on its own batch as
well, so every call progresses at least one stream at a time, whatever the others ask for.

Memory is bounded by the callers: a batch is the list its caller passed, and at most
``workers`` threads exist (started on first use).
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class _Batch(Generic[T]):
    """One caller's tasks, their results, and how far they got."""

    def __init__(self, tasks: Sequence[Callable[[], T]]) -> None:
        self.tasks = tasks
        self.next = 0  # the next task to hand out (under the pool's lock)
        self.results: list[T | None] = [None] * len(tasks)
        self.error: BaseException | None = None
        self._left = len(tasks)
        self._lock = threading.Lock()
        self._done = threading.Event()
        if not tasks:
            self._done.set()

    def run(self, index: int) -> None:
        try:
            self.results[index] = self.tasks[index]()
        except BaseException as exc:  # re-raised in the caller's thread
            with self._lock:
                if self.error is None:
                    self.error = exc
        finally:
            with self._lock:
                self._left -= 1
                if self._left == 0:
                    self._done.set()

    def wait(self) -> None:
        self._done.wait()


class FairPool:
    """Runs each caller's tasks on the caller's thread plus up to ``workers`` shared threads,
    handed out one task per caller in turn."""

    def __init__(self, workers: int, thread_name_prefix: str = "cloudlog-writer") -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._workers = workers
        self._prefix = thread_name_prefix
        self._cond = threading.Condition()
        self._batches: deque[_Batch[object]] = deque()  # batches with tasks not handed out yet
        self._threads: list[threading.Thread] = []
        self._closed = False

    def run(self, tasks: Sequence[Callable[[], T]]) -> list[T]:
        """Run every task; returns their results in order, or raises the first task's error
        once all have finished."""
        batch: _Batch[T] = _Batch(tasks)
        if len(tasks) > 1:
            with self._cond:
                if self._closed:
                    raise RuntimeError("the pool is closed")
                self._batches.append(batch)  # type: ignore[arg-type]
                while len(self._threads) < min(self._workers, len(tasks) - 1):
                    thread = threading.Thread(
                        target=self._work,
                        name=f"{self._prefix}-{len(self._threads)}",
                        daemon=True,
                    )
                    self._threads.append(thread)
                    thread.start()
                self._cond.notify(len(tasks) - 1)
        while (index := self._take_own(batch)) is not None:
            batch.run(index)
        batch.wait()
        if batch.error is not None:
            raise batch.error
        return batch.results  # type: ignore[return-value]

    def close(self) -> None:
        """Let the threads end once no batch is left; waits for them. Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            threads = list(self._threads)
        for thread in threads:
            thread.join()

    def _take_own(self, batch: _Batch[T]) -> int | None:
        with self._cond:
            if batch.next >= len(batch.tasks):
                return None
            index = batch.next
            batch.next += 1
            if batch.next >= len(batch.tasks) and len(batch.tasks) > 1:
                self._discard(batch)
            return index

    def _discard(self, batch: _Batch[T]) -> None:
        with contextlib.suppress(ValueError):
            self._batches.remove(batch)  # type: ignore[arg-type]

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._batches:
                    if self._closed:
                        return
                    self._cond.wait()
                batch = self._batches[0]
                index = batch.next
                batch.next += 1
                if batch.next >= len(batch.tasks):
                    self._batches.popleft()
                else:
                    self._batches.rotate(-1)  # the next thread serves the next caller
            batch.run(index)
