"""The writer's stream pool shares its threads between concurrent write() calls (fairpool.py)."""

from __future__ import annotations

import functools
import threading
import time

import pytest
from writer_fakes import FakeLogs

from cloudlog_writer import CloudWatchWriter, LogEvent, WriterSettings
from cloudlog_writer.fairpool import FairPool


def test_results_in_order_and_errors_raised_in_the_caller() -> None:
    pool = FairPool(3)
    try:
        squares = [functools.partial(pow, i, 2) for i in range(20)]
        assert pool.run(squares) == [i * i for i in range(20)]
        assert pool.run([]) == []

        def boom() -> int:
            raise ValueError("boom")

        with pytest.raises(ValueError, match="boom"):
            pool.run([lambda: 1, boom, lambda: 3])
    finally:
        pool.close()


def test_a_call_with_few_tasks_does_not_wait_behind_a_call_with_many() -> None:
    pool = FairPool(2)
    started = threading.Event()

    def slow() -> None:
        started.set()
        time.sleep(0.05)

    heavy = threading.Thread(target=pool.run, args=([slow] * 200,))  # 10 s on 2 threads
    heavy.start()
    try:
        assert started.wait(5)
        began = time.monotonic()
        assert pool.run([lambda: 1, lambda: 2, lambda: 3]) == [1, 2, 3]
        assert time.monotonic() - began < 1.0, "served in turn, not after the 200"
    finally:
        heavy.join(30)
        pool.close()


def test_a_writer_call_with_many_slow_new_streams_does_not_delay_another() -> None:
    fake = FakeLogs(put_delay=0.05)
    now_ms = int(time.time() * 1000)
    with CloudWatchWriter(fake, WriterSettings(stream_parallelism=2)) as writer:
        heavy = threading.Thread(
            target=writer.write,
            args=([LogEvent(f"h{i}", "g", f"heavy-{i}", now_ms, "m") for i in range(100)],),
        )
        heavy.start()
        time.sleep(0.1)
        began = time.monotonic()
        results = writer.write([LogEvent(f"q{i}", "q", f"s{i}", now_ms, "m") for i in range(4)])
        seconds = time.monotonic() - began
        heavy.join(30)
    assert all(result.written for result in results)
    assert seconds < 1.0, f"the small call took {seconds:.2f} s"
