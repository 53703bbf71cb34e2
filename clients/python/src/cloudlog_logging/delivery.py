"""One dispatcher thread per process, shared by every Flask app and logging handler in it.

Each app (or handler) keeps its own buffer and ``Dispatcher`` (its settings, API key and
counters: a batch never mixes two apps' events, so each task carries one key); this module's
``ProcessDispatcher`` drains them all from one thread, publishes through one Celery app per
broker (publisher.py), and owns what the process does at fork and at exit:

- exit is bounded as a whole: at most the largest ``CLOUDLOG_SHUTDOWN_TIMEOUT`` of the apps
  that logged, for all of them together; no wait at all when nothing is left, or when every
  publish so far failed (the broker was never reached); what is given up on is counted and
  reported in one line;
- an app that is garbage collected leaves the runner once what it logged is published, so apps
  made and dropped by the hundred (the app-factory pattern in a test suite) leave nothing behind.

The trade-off: the one thread serves apps one after the other, so while the broker is down the
thread retries the first app's batch and the others wait (their buffers bound what waits).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import deque

from cloudlog_logging.dispatcher import FORK_WAIT_S, Dispatcher

logger = logging.getLogger(__name__)

# The tick when no app has logged yet; each app's own CLOUDLOG_FLUSH_INTERVAL lowers it.
DEFAULT_TICK_S = 0.2
# Apps that are gone but whose events wait (the broker is down): each keeps its dispatcher and
# buffer (about 10 KB besides its events). Past this many, the oldest one's events are given up
# (counted, warned about once), so apps made and dropped while the broker is down stay bounded.
RETIRED_PENDING_MAX = 1_000


class ProcessDispatcher:
    """The process's one dispatcher thread. Use :func:`process_dispatcher`."""

    def __init__(self) -> None:
        self._reinit()
        self.broker_reached = False
        self.broker_failed = False
        self.abandoned_at_exit = 0
        # Every dispatcher made for this runner (for the fork hooks), attached or not.
        self._known: weakref.WeakSet[Dispatcher] = weakref.WeakSet()
        # Shutdown timeout of each attached dispatcher; the exit waits the largest.
        self._timeouts: dict[Dispatcher, float] = {}
        self._held_for_fork = False
        self._warned_retired = False
        # Dispatchers whose app is gone, handed over by a GC finalizer: a finalizer may run in
        # any thread at any allocation, even one holding self._lock, so it only appends here.
        self._forgotten: deque[Dispatcher] = deque()

    def _reinit(self) -> None:
        self.stop = threading.Event()
        self.publishing = threading.Lock()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        # id -> dispatcher, in the order they attached.
        self._attached: dict[int, Dispatcher] = {}
        self._retired: dict[int, None] = {}  # ids, oldest first
        self._thread: threading.Thread | None = None
        self._tick = DEFAULT_TICK_S
        self._closed = False

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def attached(self) -> int:
        """How many app dispatchers the thread serves now."""
        return len(self._attached)

    def register(self, dispatcher: Dispatcher, shutdown_timeout: float) -> None:
        """Know ``dispatcher`` (made with ``runner=self``); it attaches on its first event."""
        self._known.add(dispatcher)
        with self._lock:
            self._timeouts[dispatcher] = shutdown_timeout
            self._take_forgotten()

    def forget(self, dispatcher: Dispatcher) -> None:
        """Its app is gone: leave once its buffer is empty (it may still hold the last lines).

        Called by a GC finalizer: takes no lock (see ``_forgotten``)."""
        self._forgotten.append(dispatcher)

    def _take_forgotten(self) -> None:
        """With self._lock held: retire what finalizers handed over."""
        while self._forgotten:
            dispatcher = self._forgotten.popleft()
            if id(dispatcher) in self._attached:
                self._retired[id(dispatcher)] = None
            else:
                self._timeouts.pop(dispatcher, None)
        while len(self._retired) > RETIRED_PENDING_MAX:
            oldest = next(iter(self._retired))
            del self._retired[oldest]
            gone = self._attached.pop(oldest, None)
            if gone is not None:
                self._timeouts.pop(gone, None)
                given_up = gone.abandon_all()
                if given_up and not self._warned_retired:
                    self._warned_retired = True
                    logger.warning(
                        "cloudlog: more than %d apps that are gone still wait to publish; "
                        "the oldest ones' events are given up (abandoned_events)",
                        RETIRED_PENDING_MAX,
                    )

    def attach(self, dispatcher: Dispatcher) -> None:
        """Serve ``dispatcher`` from now on; starts the thread on first use."""
        with self._lock:
            if self._closed:
                return
            self._take_forgotten()
            self._attached[id(dispatcher)] = dispatcher
            dispatcher.last_drain = time.monotonic()  # its first batch waits one interval
            self._tick = min(self._tick, dispatcher.flush_interval)
            if self._thread is None:
                self.stop.clear()
                self._thread = threading.Thread(
                    target=self._run, name="cloudlog-dispatcher", daemon=True
                )
                self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self.stop.is_set():
            self._wake.wait(self._tick)
            self._wake.clear()
            now = time.monotonic()
            with self._lock:
                attached = list(self._attached.values())
            for dispatcher in attached:
                if self.stop.is_set():
                    return
                if dispatcher.is_due(now):
                    dispatcher.drain_due(now)
            if self._retired or self._forgotten:
                self._prune()

    def _prune(self) -> None:
        with self._lock:
            self._take_forgotten()
            for key in list(self._retired):
                dispatcher = self._attached.get(key)
                if dispatcher is None:
                    del self._retired[key]
                elif len(dispatcher.buffer) == 0:
                    del self._attached[key]
                    self._timeouts.pop(dispatcher, None)
                    del self._retired[key]

    def close(self, timeout: float | None = None) -> int:
        """Stop the thread; publish what is left within ``timeout`` in total (default: the largest
        shutdown timeout of the apps still here). Returns how many events were given up on."""
        with self._lock:
            self._closed = True
            attached = list(self._attached.values())
            if timeout is None:
                timeout = max(
                    (self._timeouts.get(d, 0.0) for d in attached if len(d.buffer) or d.in_flight),
                    default=0.0,
                )
        deadline = time.monotonic() + timeout
        self.stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = thread is not None and thread.is_alive()  # in a publish that does not return
        abandoned = 0
        if stuck:
            for dispatcher in attached:
                if dispatcher.in_flight:  # the batch that publish holds
                    dispatcher.abandoned_events += dispatcher.in_flight
                    abandoned += dispatcher.in_flight
        pending = [dispatcher for dispatcher in attached if len(dispatcher.buffer)]
        never_reached = self.broker_failed and not self.broker_reached
        if stuck or never_reached:
            abandoned += sum(dispatcher.abandon_all() for dispatcher in pending)
        elif pending:
            abandoned += self._finish_all(pending, deadline)
        if abandoned:
            self.abandoned_at_exit += abandoned
            if never_reached:
                reason = "the broker was never reached"
            elif stuck:
                reason = (
                    f"a publish did not return within CLOUDLOG_SHUTDOWN_TIMEOUT ({timeout:g} s)"
                )
            else:
                reason = f"not published within CLOUDLOG_SHUTDOWN_TIMEOUT ({timeout:g} s)"
            logger.error("cloudlog: gave up on %d events at shutdown (%s)", abandoned, reason)
        return abandoned

    @staticmethod
    def _finish_all(pending: list[Dispatcher], deadline: float) -> int:
        """Publish what ``pending`` hold by ``deadline``; returns how many events were given up.

        In a thread of its own: one publish may take longer than what is left (botocore retries
        a refused connection for seconds) and cannot be interrupted; past the deadline the exit
        goes on without it, and the thread ends with the interpreter.
        """
        before = [dispatcher.abandoned_events for dispatcher in pending]

        def finish() -> None:
            for dispatcher in pending:
                dispatcher.finish(deadline)

        worker = threading.Thread(target=finish, name="cloudlog-exit", daemon=True)
        worker.start()
        worker.join(max(0.0, deadline - time.monotonic()))
        abandoned = 0
        for dispatcher, earlier in zip(pending, before, strict=True):
            abandoned += dispatcher.abandoned_events - earlier
            if worker.is_alive():
                left = len(dispatcher.buffer) + dispatcher.in_flight
                dispatcher.abandoned_events += left
                abandoned += left
        return abandoned

    def before_fork(self) -> None:
        """Never fork in the middle of a publish (see ``Dispatcher.before_fork``)."""
        self._held_for_fork = self.publishing.acquire(timeout=FORK_WAIT_S)

    def after_fork_in_parent(self) -> None:
        if self._held_for_fork:
            self._held_for_fork = False
            self.publishing.release()

    def after_fork_in_child(self) -> None:
        """No thread in the child, and none of the parent's events: start afresh on first use."""
        for key in self._retired:
            if (gone := self._attached.get(key)) is not None:
                self._timeouts.pop(gone, None)
        self._reinit()
        self._held_for_fork = False
        self.broker_reached = False
        self.broker_failed = False
        for dispatcher in list(self._known):
            dispatcher.buffer.reset_after_fork()
            dispatcher.reset_after_fork()


_process_dispatcher: ProcessDispatcher | None = None
_process_lock = threading.Lock()


def process_dispatcher() -> ProcessDispatcher:
    """The process's ``ProcessDispatcher``, made (with its fork and exit hooks) on first use."""
    global _process_dispatcher
    if _process_dispatcher is None:
        with _process_lock:
            if _process_dispatcher is None:
                runner = ProcessDispatcher()
                os.register_at_fork(
                    before=runner.before_fork,
                    after_in_parent=runner.after_fork_in_parent,
                    after_in_child=runner.after_fork_in_child,
                )
                atexit.register(runner.close)
                _process_dispatcher = runner
    return _process_dispatcher
