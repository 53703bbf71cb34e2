"""Prometheus metrics of the Flask extension: its buffer and what it dropped and published.

A custom collector reads ``StatsSource.stats()`` at each scrape, so nothing is counted twice
and the request path pays nothing. One collector per registry serves every app registered on
it, one ``app`` label each (the Flask app's name, so bounded by the apps in the process).

    state = app.extensions["cloudlog"]
    state.register_metrics()            # prometheus_client's default registry
    state.register_metrics(my_registry) # or one of your own
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import Final, Protocol

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class StatsSource(Protocol):
    """One app's state (extension.StatsSource), as far as metrics need it."""

    def stats(self) -> dict[str, int]: ...


# stats() key -> (metric name, help); gauges are levels, counters only grow.
GAUGES: Final = {
    "buffered_events": ("cloudlog_client_buffered_events", "Events waiting in the buffer."),
    "buffered_bytes": (
        "cloudlog_client_buffered_bytes",
        "Estimated bytes waiting in the buffer (message characters + 256 per event).",
    ),
}
COUNTERS: Final = {
    "accepted_events": ("cloudlog_client_accepted_events", "Events taken into the buffer."),
    "dropped_events": (
        "cloudlog_client_dropped_events",
        "Events dropped because the buffer was full (CLOUDLOG_OVERFLOW_POLICY).",
    ),
    "empty_messages": (
        "cloudlog_client_empty_messages",
        "Records with an empty message, not shipped (CloudWatch refuses them).",
    ),
    "published_events": ("cloudlog_client_published_events", "Events published to the queue."),
    "published_tasks": (
        "cloudlog_client_published_tasks",
        "Delivery tasks (batches) published to the queue.",
    ),
    "publish_failures": (
        "cloudlog_client_publish_failures",
        "Failed attempts to publish a batch (each retried until the retry window ends).",
    ),
    "abandoned_events": (
        "cloudlog_client_abandoned_events",
        "Events given up after publishing failed for CLOUDLOG_PUBLISH_RETRY_MAX_SECONDS, or "
        "left in the buffer at shutdown.",
    ),
}


class ExtensionCollector(Collector):
    """Every registered app's ``stats()``, read at scrape time. States are held weakly."""

    def __init__(self) -> None:
        self._states: dict[str, weakref.ref[StatsSource]] = {}
        self._lock = threading.Lock()

    def add(self, app_name: str, state: StatsSource) -> None:
        """Register (or replace) the state shown under ``app=app_name``."""
        with self._lock:
            self._states[app_name] = weakref.ref(state)

    def _families(self) -> list[GaugeMetricFamily | CounterMetricFamily]:
        families: list[GaugeMetricFamily | CounterMetricFamily] = [
            GaugeMetricFamily(name, text, labels=["app"]) for name, text in GAUGES.values()
        ]
        families.extend(
            CounterMetricFamily(name, text, labels=["app"]) for name, text in COUNTERS.values()
        )
        return families

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            states = {name: ref() for name, ref in self._states.items()}
            for name in [name for name, state in states.items() if state is None]:
                del self._states[name]
        families = self._families()
        keys = [*GAUGES, *COUNTERS]
        for app_name, state in states.items():
            if state is None:
                continue
            stats = state.stats()
            for family, key in zip(families, keys, strict=True):
                family.add_metric([app_name], stats[key])
        return families


_collectors: weakref.WeakKeyDictionary[CollectorRegistry, ExtensionCollector] = (
    weakref.WeakKeyDictionary()
)
_collectors_lock = threading.Lock()


def register_state(
    state: StatsSource, app_name: str, registry: CollectorRegistry | None = None
) -> ExtensionCollector:
    """Show ``state`` on ``registry`` (default: prometheus_client's global one)."""
    target = REGISTRY if registry is None else registry
    with _collectors_lock:
        collector = _collectors.get(target)
        if collector is None:
            collector = _collectors[target] = ExtensionCollector()
            target.register(collector)
    collector.add(app_name, state)
    return collector
