"""The Flask extension's metrics: stats() as Prometheus sees it, read at scrape time."""

from __future__ import annotations

import gc
import threading
from typing import Any

from flask import Flask
from prometheus_client import CollectorRegistry, generate_latest

from flask_cloudlog import CloudLog, CloudLogState
from flask_cloudlog.metrics import COUNTERS, GAUGES
from tests.unit.test_extension import RecordingPublisher, make_state, unique_name


def scraped(registry: CollectorRegistry, app_name: str) -> dict[str, float]:
    """stats() keys -> the values a scrape shows for ``app_name``."""
    names = {key: name for key, (name, _) in GAUGES.items()}
    names.update({key: f"{name}_total" for key, (name, _) in COUNTERS.items()})
    values = {}
    for key, name in names.items():
        found = registry.get_sample_value(name, {"app": app_name})
        assert found is not None, name
        values[key] = found
    return values


class HeldPublisher(RecordingPublisher):
    """Publishes only once released: the buffer fills behind it."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def __call__(self, batch: list[dict[str, Any]]) -> None:
        self.release.wait(10)
        super().__call__(batch)


def test_a_scrape_shows_stats_as_they_are_at_that_moment() -> None:
    registry = CollectorRegistry()
    state, publisher = make_state()
    state.app_name = "shop"
    state.register_metrics(registry)
    assert scraped(registry, "shop") == state.stats()
    for n in range(5):
        state.log("info", f"line {n}")
    assert state.flush(5)
    after = scraped(registry, "shop")
    state.close()
    assert after["published_events"] == 5 == len(publisher.events)
    assert after["accepted_events"] == 5
    assert after["buffered_events"] == 0


def test_drops_and_buffer_depth_are_visible() -> None:
    registry = CollectorRegistry()
    publisher = HeldPublisher()
    state = CloudLogState(
        make_state(buffer_max_events=3, batch_max_events=1)[0].settings,
        publisher=publisher,
        app_name="busy",
    )
    state.register_metrics(registry)
    for n in range(20):
        state.log("info", f"line {n}")
    held = scraped(registry, "busy")
    publisher.release.set()
    state.close()
    assert held["buffered_events"] == 3
    # 20 logged: 3 in the buffer, at most one in the held publisher's hands, the rest dropped.
    assert 16 <= held["dropped_events"] <= 17


def test_apps_share_a_registry_one_label_each() -> None:
    registry = CollectorRegistry()
    first, second = Flask(unique_name()), Flask(unique_name())
    for app in (first, second):
        CloudLog(app, log_stream="s")
        app.extensions["cloudlog"].register_metrics(registry)
        app.extensions["cloudlog"].register_metrics(registry)  # again: replaces, no error
    text = generate_latest(registry).decode()
    assert f'cloudlog_client_dropped_events_total{{app="{first.name}"}} 0.0' in text
    assert f'cloudlog_client_dropped_events_total{{app="{second.name}"}} 0.0' in text
    assert text.count("# HELP cloudlog_client_dropped_events_total") == 1
    for app in (first, second):
        app.extensions["cloudlog"].close()


def test_a_state_that_is_gone_leaves_the_scrape() -> None:
    registry = CollectorRegistry()
    state, _ = make_state()
    state.app_name = "gone"
    state.register_metrics(registry)
    assert 'app="gone"' in generate_latest(registry).decode()
    del state
    gc.collect()
    assert 'app="gone"' not in generate_latest(registry).decode()


def test_the_default_is_prometheus_clients_global_registry() -> None:
    from prometheus_client import REGISTRY

    state, _ = make_state()
    state.app_name = unique_name()
    state.register_metrics()
    try:
        assert (
            REGISTRY.get_sample_value("cloudlog_client_buffered_events", {"app": state.app_name})
            == 0
        )
    finally:
        state.close()
