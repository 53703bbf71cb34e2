from __future__ import annotations

from cloudlog_writer.limits import MAX_EVENT_AGE_MS, MAX_FUTURE_MS
from cloudlog_writer.models import LogEvent, RejectReason
from cloudlog_writer.rejections import map_rejections

NOW = 1_800_000_000_000


def batch(*stamps: int) -> list[LogEvent]:
    return [LogEvent(f"id{i}", "g", "s", ts, f"m{i}") for i, ts in enumerate(stamps)]


def test_no_info_means_nothing_rejected() -> None:
    assert map_rejections(batch(NOW, NOW + 1), None, NOW) == {}
    assert map_rejections(batch(NOW, NOW + 1), {}, NOW) == {}


def test_documented_index_semantics() -> None:
    # Timestamps distinct and all inside our own window: only the indices decide.
    events = batch(*(NOW + i for i in range(8)))
    info = {
        "tooOldLogEventEndIndex": 2,
        "expiredLogEventEndIndex": 3,
        "tooNewLogEventStartIndex": 6,
    }
    assert map_rejections(events, info, NOW) == {
        0: RejectReason.TOO_OLD,  # [0, 2): end index exclusive
        1: RejectReason.TOO_OLD,
        2: RejectReason.EXPIRED,  # [2, 3): expired beyond the too-old ones
        6: RejectReason.TOO_NEW,  # [6, 8): start index inclusive
        7: RejectReason.TOO_NEW,
    }


def test_equal_timestamps_share_the_fate_of_a_rejected_one() -> None:
    events = batch(NOW, NOW, NOW + 1, NOW + 5, NOW + 5)
    info = {"tooOldLogEventEndIndex": 1, "tooNewLogEventStartIndex": 4}
    got = map_rejections(events, info, NOW)
    assert got == {0: RejectReason.TOO_OLD, 1: RejectReason.TOO_OLD,
                   3: RejectReason.TOO_NEW, 4: RejectReason.TOO_NEW}  # fmt: skip


def test_moto_style_last_index_is_still_covered_by_our_clock() -> None:
    # moto reports the *last* too-old index and the *last* too-new index.
    old = NOW - MAX_EVENT_AGE_MS - 10
    new = NOW + MAX_FUTURE_MS + 10
    events = batch(old, old + 1, NOW, new, new + 1)
    info = {"tooOldLogEventEndIndex": 1, "tooNewLogEventStartIndex": 4}
    assert map_rejections(events, info, NOW) == {
        0: RejectReason.TOO_OLD,
        1: RejectReason.TOO_OLD,
        3: RejectReason.TOO_NEW,
        4: RejectReason.TOO_NEW,
    }


def test_out_of_range_indices_are_clamped() -> None:
    events = batch(NOW, NOW + 1)
    assert map_rejections(events, {"tooNewLogEventStartIndex": 99}, NOW) == {}
    assert map_rejections(events, {"tooOldLogEventEndIndex": 99}, NOW) == {
        0: RejectReason.TOO_OLD,
        1: RejectReason.TOO_OLD,
    }
