"""Startup objects frozen: garbage cycles promoted to the oldest generation are collected without
anyone calling gc.collect() (in the worker, kombu's SQS responses live in such cycles)."""

from __future__ import annotations

import gc
import weakref

from cloudlog_core.gc_settle import freeze_startup_objects, unfreeze


class Node:
    payload: bytearray
    other: Node


def promoted_cycle() -> weakref.ref[Node]:
    """A 100 KB cycle that, like a request in flight, outlives two young collections."""
    first, second = Node(), Node()
    first.other, second.other = second, first
    first.payload = bytearray(100_000)
    gc.collect(0)
    gc.collect(1)
    return weakref.ref(first)


def make_young_garbage(rounds: int) -> None:
    """What a busy service allocates: short-lived containers, some of them cyclic."""
    for _ in range(rounds):
        made: list[object] = [[] for _ in range(10)]
        made.append(made)


def test_promoted_cycles_are_collected_by_the_collector_itself() -> None:
    assert gc.isenabled()
    # What a service keeps from its startup: ~130,000 objects in the worker.
    startup = [[n] for n in range(300_000)]
    freeze_startup_objects()
    try:
        cycles = [promoted_cycle() for _ in range(50)]
        make_young_garbage(100_000)
        assert [ref() for ref in cycles] == [None] * 50
    finally:
        unfreeze()
        del startup
