from __future__ import annotations

from cloudlog_writer.retry import BackoffPolicy


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def policy(t: FakeTime, rnd: float = 1.0, **kw: float) -> BackoffPolicy:
    return BackoffPolicy(clock=t.clock, sleep=t.sleep, random=lambda: rnd, **kw)  # type: ignore[arg-type]


def test_ceiling_doubles_and_is_capped() -> None:
    p = BackoffPolicy(base_seconds=0.1, max_sleep_seconds=1.0)
    assert [round(p.ceiling(n), 3) for n in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert p.ceiling(10_000) == 1.0  # no overflow


def test_full_jitter_spans_zero_to_ceiling() -> None:
    t = FakeTime()
    assert policy(t, rnd=0.0).delay(3) == 0.0
    assert policy(t, rnd=0.999).delay(3) == 0.999 * 0.8
    real = BackoffPolicy(base_seconds=0.1, max_sleep_seconds=10)
    draws = [real.delay(4) for _ in range(2000)]
    assert all(0.0 <= d <= 1.6 for d in draws)
    assert min(draws) < 0.2 and max(draws) > 1.4  # really spread over the whole range


def test_attempt_cap() -> None:
    t = FakeTime()
    state = policy(t, max_attempts=4, max_total_seconds=1e9).start()
    assert [state.backoff() for _ in range(5)] == [True, True, True, False, False]
    assert state.attempts == 4
    assert len(t.sleeps) == 3


def test_total_time_cap_refuses_a_sleep_that_would_cross_it() -> None:
    t = FakeTime()
    p = policy(t, max_attempts=100, max_total_seconds=5.0, base_seconds=1.0, max_sleep_seconds=4)
    state = p.start()
    while state.backoff():
        pass
    assert sum(t.sleeps) <= 5.0
    assert t.sleeps == [1.0, 2.0]  # a third sleep of 4 s would end at 7 s


def test_retry_now_counts_attempts_without_sleeping() -> None:
    t = FakeTime()
    state = policy(t, max_attempts=3).start()
    assert state.retry_now() and state.retry_now()
    assert not state.retry_now()
    assert t.sleeps == []
