from __future__ import annotations

import pytest

from cloudlog_writer.admission import check_event
from cloudlog_writer.limits import MAX_EVENT_AGE_MS, MAX_FUTURE_MS, MS_PER_DAY
from cloudlog_writer.models import LogEvent, RejectReason

NOW = 1_800_000_000_000


def ev(
    ts: int = NOW, group: str = "app/prod", stream: str = "web-1", message: str = "m"
) -> LogEvent:
    return LogEvent("id", group, stream, ts, message)


def test_window_edges() -> None:
    assert check_event(ev(NOW - MAX_EVENT_AGE_MS), NOW) is None
    assert check_event(ev(NOW - MAX_EVENT_AGE_MS - 1), NOW)[0] is RejectReason.TOO_OLD  # type: ignore[index]
    assert check_event(ev(NOW + MAX_FUTURE_MS), NOW) is None
    assert check_event(ev(NOW + MAX_FUTURE_MS + 1), NOW)[0] is RejectReason.TOO_NEW  # type: ignore[index]


def test_expired_by_known_retention() -> None:
    ts = NOW - 3 * MS_PER_DAY - 1
    assert check_event(ev(ts), NOW, retention_days=3)[0] is RejectReason.EXPIRED  # type: ignore[index]
    assert check_event(ev(ts), NOW, retention_days=None) is None
    assert check_event(ev(NOW - 3 * MS_PER_DAY), NOW, retention_days=3) is None


@pytest.mark.parametrize(
    "bad",
    [
        ev(group=""),
        ev(group="aws/lambda"),
        ev(group="has space"),
        ev(group="x" * 513),
        ev(stream=""),
        ev(stream="a:b"),
        ev(stream="a*b"),
        ev(stream="x" * 513),
        ev(message=""),
        ev(message="lone \ud800 surrogate"),
    ],
)
def test_invalid_events(bad: LogEvent) -> None:
    refusal = check_event(bad, NOW)
    assert refusal is not None and refusal[0] is RejectReason.INVALID


def test_valid_names_at_the_limits() -> None:
    assert check_event(ev(group="a" * 512, stream="s" * 512), NOW) is None
    assert check_event(ev(group="._-/#Az09", stream="any thing/é"), NOW) is None
