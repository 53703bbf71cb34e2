from __future__ import annotations

import pytest

from cloudlog_writer.limits import LEGACY_MAX_EVENT_BYTES, event_size
from cloudlog_writer.models import LogEvent
from cloudlog_writer.splitting import SplitError, marker, parse_marker, reassemble, split_event


def event(message: str, event_id: str = "01HXYZ") -> LogEvent:
    return LogEvent(event_id, "g", "s", 1234, message)


def test_small_event_is_returned_unchanged() -> None:
    e = event("hello")
    assert split_event(e, 1024) == [e]


def test_event_exactly_at_limit_is_not_split() -> None:
    e = event("a" * (1024 - 26))
    assert event_size(e.message) == 1024
    assert split_event(e, 1024) == [e]
    assert len(split_event(event("a" * (1024 - 25)), 1024)) == 2


@pytest.mark.parametrize("char", ["a", "é", "€", "😀", "a😀€é"])
def test_parts_fit_are_valid_utf8_and_reassemble_exactly(char: str) -> None:
    message = char * 3001
    parts = split_event(event(message), 1024)
    assert len(parts) > 1
    for i, part in enumerate(parts, start=1):
        assert event_size(part.message) <= 1024
        assert part.event_id == "01HXYZ"
        assert part.timestamp == 1234
        assert part.message.startswith(marker(i, len(parts), "01HXYZ"))
        assert "\ufffd" not in part.message  # no character was cut in two
    assert reassemble([p.message for p in parts]) == [message]


def test_four_byte_characters_never_cut_at_any_offset() -> None:
    # Shift a run of 4-byte characters through every alignment relative to the cut points.
    for prefix in range(4):
        message = "a" * prefix + "😀" * 2000
        parts = split_event(event(message), 1024)
        bodies = [parse_marker(p.message) for p in parts]
        assert all(b is not None for b in bodies)
        assert "".join(b[3] for b in bodies if b) == message


def test_marker_width_grows_with_part_count() -> None:
    # More than 9 parts: the marker for part 10/NN is wider and still counts toward the limit.
    message = "z" * 50_000
    parts = split_event(event(message), 1024)
    assert len(parts) >= 10
    assert all(event_size(p.message) <= 1024 for p in parts)
    assert parts[9].message.startswith(f"[cloudlog part 10/{len(parts)} 01HXYZ] ")
    assert reassemble([p.message for p in parts]) == [message]


def test_legacy_256k_limit() -> None:
    message = "€" * 200_000  # 600,000 bytes
    parts = split_event(event(message), LEGACY_MAX_EVENT_BYTES)
    assert len(parts) == 3
    assert all(event_size(p.message) <= LEGACY_MAX_EVENT_BYTES for p in parts)
    assert reassemble([p.message for p in parts]) == [message]


def test_event_id_unusable_in_marker_is_refused() -> None:
    with pytest.raises(SplitError):
        split_event(event("a" * 5000, event_id="has space"), 1024)
    with pytest.raises(SplitError):
        split_event(event("a" * 5000, event_id="x" * 1000), 1024)


def test_reassemble_keeps_order_ignores_duplicates_and_keeps_incomplete_sets() -> None:
    a = [p.message for p in split_event(event("A" * 3000, "ida"), 1024)]
    b = [p.message for p in split_event(event("B" * 3000, "idb"), 1024)]
    messages = ["first", *a, a[0], "middle", *b[:-1], "last"]
    out = reassemble(messages)
    assert out[:3] == ["first", "A" * 3000, "middle"]
    assert out[3:-1] == b[:-1]  # incomplete set: shown as is, never hidden
    assert out[-1] == "last"


def test_parse_marker_rejects_impossible_index() -> None:
    assert parse_marker("[cloudlog part 3/2 id] x") is None
    assert parse_marker("plain") is None
    assert parse_marker("[cloudlog part 2/2 id] body") == (2, 2, "id", "body")
