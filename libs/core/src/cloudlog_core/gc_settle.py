"""Keep a long-running service's startup objects out of the cyclic garbage collector.

CPython runs a full collection only once the objects promoted to the oldest generation since the
last one reach a quarter of those it kept (``long_lived_pending > long_lived_total / 4`` in
CPython 3.11's gcmodule.c). A service that has just imported FastAPI, pydantic, botocore or
Celery keeps 100,000 objects or more, so full collections then come minutes apart, and every one
walks all of them again. Garbage in reference cycles that lived long enough to be promoted
waits for the next one: in the worker, kombu's asynchronous SQS client leaves every
ReceiveMessage response in such a cycle (a fulfilled promise keeps the response, which keeps its
request, which keeps the promise), and the worker's RSS grew steadily under load.

Freezing what exists once the service is up moves it out of the collector's reach
(``gc.freeze``); the collection right after counts the kept objects again, now only those not
frozen, so full collections come as often as the service makes garbage and walk only that.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Call once the service has started (imports done, clients built)."""
    gc.collect()  # what startup left as garbage is not worth keeping forever
    gc.freeze()
    gc.collect()  # sets the count full collections are measured against: the unfrozen only


def unfreeze() -> None:
    """At shutdown: hand the frozen objects back to the collector."""
    gc.unfreeze()
