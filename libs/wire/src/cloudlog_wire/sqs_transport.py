"""kombu's SQS transport, with its poll loop kept alive and its messages kept short-lived.

**Poll loop.** kombu 5.7's asynchronous ReceiveMessage turns a timed-out or 5xx answer into
``[]`` (``AsyncAWSQueryConnection._on_list_ready``; pycurl reports a refused connection as 599,
a timeout). ``Channel._on_messages_ready`` then calls ``.get`` on that list; the AttributeError
breaks the promise chain before ``_loop1`` schedules the next poll, and the worker never
receives again, while looking alive (celery/kombu#1127 reports stalls of this family). Here an
answer that is not a ReceiveMessage response counts as an empty poll, so polling goes on.

**Visibility heartbeat.** A message a worker has received stays invisible for the visibility
timeout; if the worker dies (``kill -9``, out of memory, a lost host) SQS hands it to another
consumer only once that timeout has run out. So the timeout is short (``visibility_timeout``,
30 s by default, asked for explicitly on every ReceiveMessage so that the queue's own attribute
does not matter), and while a message is in flight (from its delivery to the consumer until it
is acknowledged or rejected: waiting for a slot, running, publishing its retry) a
``VisibilityHeartbeat`` thread extends it with ChangeMessageVisibility every
``visibility_heartbeat_interval`` seconds (a third of the timeout by default). An SQS error
costs one beat, not the message: the next beat tries again, and two beats fit inside the
timeout. Extensions are bounded: a message held longer than ``visibility_max_hold_seconds``
(the longest a task may legitimately take) is no longer extended and SQS redelivers it, so a
stuck task cannot hide its message for ever. A dead worker's messages are back within one
timeout.

Selected with Celery's ``broker_transport`` setting (see ``cloudlog_wire.broker``), which also
passes the options above through ``broker_transport_options``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError
from kombu.transport import SQS

from cloudlog_wire.broker import HEARTBEAT_INTERVAL_OPTION, MAX_HOLD_OPTION

logger = logging.getLogger(__name__)

# Without the option: messages are extended for at most this long.
DEFAULT_MAX_HOLD_SECONDS = 3600.0
# Error codes meaning the receipt handle is no longer ours (acknowledged meanwhile, or
# redelivered to someone else): extending it again cannot succeed.
GONE_CODES = frozenset(
    {
        "ReceiptHandleIsInvalid",
        "InvalidParameterValue",
        "MessageNotInflight",
        "AWS.SimpleQueueService.MessageNotInflight",
    }
)

Extend = Callable[[str, str, int], None]  # (queue_url, receipt_handle, timeout seconds)


@dataclass(slots=True)
class HeldMessage:
    queue_url: str
    receipt_handle: str
    received_at: float
    extensions: int = 0


class VisibilityHeartbeat:
    """Keeps the messages a consumer holds invisible, from a thread, until it lets them go.

    ``hold`` when a message is delivered, ``release`` when it is acknowledged or rejected.
    ``beat`` extends every held message to ``timeout`` seconds from now; the thread calls it
    every ``interval`` seconds while something is held. A message held for ``max_hold``
    seconds is given up (logged once) and left to SQS's timeout.
    """

    def __init__(
        self,
        extend: Extend,
        timeout: int,
        interval: float,
        max_hold: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < interval < timeout:
            raise ValueError(f"heartbeat interval {interval} s must be within (0, {timeout}) s")
        self._extend = extend
        self.timeout = timeout
        self.interval = interval
        self.max_hold = max_hold
        self._clock = clock
        self._held: dict[str, HeldMessage] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.failures = 0

    def hold(self, queue_url: str, receipt_handle: str) -> None:
        with self._lock:
            if self._stopped:
                return
            self._held[receipt_handle] = HeldMessage(queue_url, receipt_handle, self._clock())
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="sqs-visibility-heartbeat", daemon=True
                )
                self._thread.start()

    def release(self, receipt_handle: str) -> None:
        with self._lock:
            self._held.pop(receipt_handle, None)

    def held(self) -> int:
        with self._lock:
            return len(self._held)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._held.clear()
            self._wake.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            # A beat in progress ends within its calls' timeouts; the thread is a daemon, so
            # a shutdown does not wait longer than this for it.
            thread.join(timeout=5.0)

    def beat(self) -> int:
        """One round: extend each held message; returns how many were extended."""
        with self._lock:
            due = list(self._held.values())
        extended = 0
        for message in due:
            with self._lock:
                if self._held.get(message.receipt_handle) is not message:
                    continue  # acknowledged or rejected meanwhile
                if self._clock() - message.received_at >= self.max_hold:
                    del self._held[message.receipt_handle]
                    logger.warning(
                        "message held for %.0f s (%d extensions), longer than a task may take "
                        "(%.0f s): no longer extending it; SQS redelivers it in %d s",
                        self._clock() - message.received_at,
                        message.extensions,
                        self.max_hold,
                        self.timeout,
                    )
                    continue
            try:
                self._extend(message.queue_url, message.receipt_handle, self.timeout)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code in GONE_CODES:
                    self.release(message.receipt_handle)
                    logger.debug("message no longer in flight (%s): not extending it", code)
                    continue
                self._failed(exc)
                continue
            except Exception as exc:  # a network error: the next beat tries again
                self._failed(exc)
                continue
            message.extensions += 1
            extended += 1
        return extended

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        logger.warning(
            "could not extend a message's visibility (%s: %s); trying again in %.0f s",
            type(exc).__name__,
            exc,
            self.interval,
        )

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._stopped:
                    self._wake.wait(timeout=self.interval)
                if self._stopped:
                    return
                if not self._held:
                    self._thread = None
                    return
            try:
                self.beat()
            except Exception:  # pragma: no cover - beat catches what it expects
                logger.exception("visibility heartbeat failed; trying again")


class QoS(SQS.QoS):
    def append(self, message: Any, delivery_tag: Any) -> None:
        super().append(message, delivery_tag)
        self.channel.hold_message(message)


class Channel(SQS.Channel):
    QoS = QoS
    _heartbeat: VisibilityHeartbeat | None = None
    _heartbeat_lock = threading.Lock()

    def _on_messages_ready(self, queue: Any, qname: str, messages: Any) -> int:
        if not isinstance(messages, dict):
            return 0
        count: int = super()._on_messages_ready(queue, qname, messages)
        return count

    # -- the visibility timeout, asked for on every receive ---------------------------------

    def _get_from_sqs(
        self,
        queue_name: str,
        queue_url: str,
        connection: Any,
        count: int = 1,
        callback: Any = None,
    ) -> Any:
        return connection.receive_message(
            queue_name,
            queue_url,
            number_messages=count,
            visibility_timeout=self.visibility_timeout,
            wait_time_seconds=self.wait_time_seconds,
            callback=callback,
        )

    def _receive_message(
        self, queue: str, max_number_of_messages: int = 1, wait_time_seconds: int | None = None
    ) -> Any:
        q_url: str = self._new_queue(queue)
        params: dict[str, Any] = {
            "QueueUrl": q_url,
            "MaxNumberOfMessages": max_number_of_messages,
            "WaitTimeSeconds": wait_time_seconds or self.wait_time_seconds,
            "VisibilityTimeout": self.visibility_timeout,
        }
        attributes = self.get_message_attributes
        if names := attributes.get("MessageSystemAttributeNames"):
            params["MessageSystemAttributeNames"] = names
        if names := attributes.get("MessageAttributeNames"):
            params["MessageAttributeNames"] = names
        return self.sqs(queue=queue).receive_message(**params)

    # -- the heartbeat ------------------------------------------------------------------------

    @property
    def heartbeat(self) -> VisibilityHeartbeat:
        with self._heartbeat_lock:
            if self._heartbeat is None:
                timeout = self.visibility_timeout
                # The worker checks the interval at start; here it is only kept inside (0, T/2].
                interval = self.transport_options.get(HEARTBEAT_INTERVAL_OPTION) or timeout / 3
                interval = min(float(interval), timeout / 2)
                max_hold = self.transport_options.get(MAX_HOLD_OPTION) or DEFAULT_MAX_HOLD_SECONDS
                self._heartbeat = VisibilityHeartbeat(
                    self._extend_visibility, timeout, float(interval), float(max_hold)
                )
            return self._heartbeat

    def _extend_visibility(self, queue_url: str, receipt_handle: str, timeout: int) -> None:
        self._heartbeat_client(queue_url).change_message_visibility(
            QueueUrl=queue_url, ReceiptHandle=receipt_handle, VisibilityTimeout=timeout
        )

    def _heartbeat_client(self, queue_url: str) -> Any:
        # kombu's release client: short timeouts, no retries (the next beat is the retry).
        clients: dict[str, Any] = self.__dict__.setdefault("_heartbeat_clients", {})
        client = clients.get(queue_url)
        if client is None:
            client = clients[queue_url] = self._new_release_client(self.sqs())
        return client

    def hold_message(self, message: Any) -> None:
        info = getattr(message, "delivery_info", None) or {}
        queue_url = info.get("sqs_queue")
        receipt_handle = (info.get("sqs_message") or {}).get("ReceiptHandle")
        if queue_url and receipt_handle and self.visibility_timeout >= 2:
            heartbeat = self.heartbeat
            self._heartbeat_client(queue_url)  # made here, in the consumer, not in the thread
            heartbeat.hold(queue_url, receipt_handle)

    def _let_go(self, delivery_tag: Any) -> None:
        if self._heartbeat is not None and isinstance(delivery_tag, str):
            self._heartbeat.release(delivery_tag)

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        self._let_go(delivery_tag)
        super().basic_ack(delivery_tag, multiple=multiple)

    def basic_reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        self._let_go(delivery_tag)
        super().basic_reject(delivery_tag, requeue=requeue)

    def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
        super().close()


class Transport(SQS.Transport):
    Channel = Channel
