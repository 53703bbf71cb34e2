"""kombu's SQS transport, with its poll loop kept alive across a failed receive.

kombu 5.7's asynchronous ReceiveMessage turns a timed-out or 5xx answer into ``[]``
(``AsyncAWSQueryConnection._on_list_ready``; pycurl reports a refused connection as 599, a
timeout). ``Channel._on_messages_ready`` then calls ``.get`` on that list; the AttributeError
breaks the promise chain before ``_loop1`` schedules the next poll, and the worker never
receives again, while looking alive (celery/kombu#1127 reports stalls of this family). Here an
answer that is not a ReceiveMessage response counts as an empty poll, so polling goes on.
Selected with Celery's ``broker_transport`` setting (see ``cloudlog_wire.broker``).
"""

from __future__ import annotations

from typing import Any

from kombu.transport import SQS


class Channel(SQS.Channel):
    def _on_messages_ready(self, queue: Any, qname: str, messages: Any) -> int:
        if not isinstance(messages, dict):
            return 0
        count: int = super()._on_messages_ready(queue, qname, messages)
        return count


class Transport(SQS.Transport):
    Channel = Channel
