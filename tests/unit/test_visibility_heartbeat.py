"""The visibility heartbeat: a held SQS message is extended while held, and only then.

The ``VisibilityHeartbeat`` on its own with a scripted clock; then the transport against moto
on loopback: a message a consumer holds stays hidden well past the visibility timeout, and is
back once the consumer lets it go, acknowledges it, or dies; a retried task waits in SQS
(DelaySeconds), not in a worker.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from celery import Celery
from celery.exceptions import Retry
from kombu import Connection, Consumer, Queue

from cloudlog_core.aws import LOCAL_ENDPOINT_CREDENTIALS, AwsSettings
from cloudlog_devtools.processes import free_port
from cloudlog_wire.broker import (
    HEARTBEAT_INTERVAL_OPTION,
    MAX_HOLD_OPTION,
    BrokerSettings,
    celery_broker_config,
    ensure_queues,
)
from cloudlog_wire.payload import TaskCompression, encode, events_json
from cloudlog_wire.sqs_transport import Channel, VisibilityHeartbeat
from cloudlog_worker.settings import WorkerSettings, check_visibility_timeout
from cloudlog_worker.tasks import delay_seconds, register_tasks
from cloudlog_worker.worker import create_worker_app

EVENTS = [{"event_id": "e1", "timestamp": 1, "log_group": "g", "log_stream": "s", "message": "m"}]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Extensions(list[tuple[str, str, int]]):
    """ChangeMessageVisibility as the heartbeat calls it; ``fail`` scripts the next answers."""

    def __init__(self) -> None:
        super().__init__()
        self.fail: list[BaseException] = []

    def __call__(self, queue_url: str, receipt_handle: str, timeout: int) -> None:
        if self.fail:
            raise self.fail.pop(0)
        self.append((queue_url, receipt_handle, timeout))


def client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, "ChangeMessageVisibility")


def heartbeat(
    extend: Extensions, clock: Clock, timeout: int = 30, max_hold: float = 125.0
) -> VisibilityHeartbeat:
    return VisibilityHeartbeat(extend, timeout, timeout / 3, max_hold, clock=clock)


def test_a_held_message_is_extended_on_every_beat_until_released() -> None:
    extend, clock = Extensions(), Clock()
    beats = heartbeat(extend, clock)
    beats.hold("q", "r1")
    beats.hold("q", "r2")
    try:
        assert beats.beat() == 2
        clock.now += 10
        beats.release("r1")
        assert beats.beat() == 1
        beats.release("r2")
        assert beats.beat() == 0
    finally:
        beats.stop()
    assert extend == [("q", "r1", 30), ("q", "r2", 30), ("q", "r2", 30)]


def test_an_sqs_error_costs_one_beat_not_the_message() -> None:
    extend, clock = Extensions(), Clock()
    beats = heartbeat(extend, clock)
    beats.hold("q", "r1")
    try:
        extend.fail = [client_error("ServiceUnavailable")]
        assert beats.beat() == 0 and beats.failures == 1
        extend.fail = [EndpointConnectionError(endpoint_url="http://sqs")]
        assert beats.beat() == 0 and beats.failures == 2
        assert beats.beat() == 1  # still held, extended as soon as SQS answers again
        assert beats.held() == 1
    finally:
        beats.stop()


def test_a_message_that_is_no_longer_in_flight_is_let_go() -> None:
    extend, clock = Extensions(), Clock()
    beats = heartbeat(extend, clock)
    beats.hold("q", "r1")
    try:
        extend.fail = [client_error("ReceiptHandleIsInvalid")]
        assert beats.beat() == 0
        assert beats.held() == 0 and beats.failures == 0
    finally:
        beats.stop()


def test_extensions_are_bounded_by_the_longest_legitimate_hold() -> None:
    extend, clock = Extensions(), Clock()
    beats = heartbeat(extend, clock, timeout=30, max_hold=125)
    beats.hold("q", "stuck")
    try:
        rounds = 0
        while beats.held() and rounds < 100:
            beats.beat()
            clock.now += beats.interval
            rounds += 1
    finally:
        beats.stop()
    # 125 s at one beat every 10 s: 13 extensions (at 0, 10, ..., 120 s), then SQS takes over.
    assert len(extend) == 13 and rounds == 14


def test_the_thread_extends_while_held_and_ends_when_nothing_is() -> None:
    extend = Extensions()
    beats = VisibilityHeartbeat(extend, timeout=3, interval=0.05, max_hold=60)
    beats.hold("q", "r1")
    time.sleep(0.3)
    assert len(extend) >= 3
    beats.release("r1")
    time.sleep(0.2)
    seen = len(extend)
    time.sleep(0.2)
    assert len(extend) == seen  # nothing held: no more calls
    assert beats._thread is None  # the thread ended; a new hold starts another
    beats.hold("q", "r2")
    time.sleep(0.2)
    beats.stop()
    assert ("q", "r2", 3) in extend
    stopped_at = len(extend)
    time.sleep(0.15)
    assert len(extend) == stopped_at


def test_the_interval_must_be_inside_the_timeout() -> None:
    with pytest.raises(ValueError, match="interval"):
        VisibilityHeartbeat(Extensions(), timeout=10, interval=10, max_hold=60)


def test_the_worker_checks_that_two_beats_fit_in_one_timeout() -> None:
    worker = WorkerSettings()
    check_visibility_timeout(worker, BrokerSettings())  # defaults: 30 s, a beat every 10 s
    check_visibility_timeout(worker, BrokerSettings(visibility_timeout=12))
    check_visibility_timeout(
        worker, BrokerSettings(visibility_timeout=30, visibility_heartbeat_interval=15)
    )
    with pytest.raises(ValueError, match="CLOUDLOG_VISIBILITY_HEARTBEAT_INTERVAL"):
        check_visibility_timeout(
            worker, BrokerSettings(visibility_timeout=30, visibility_heartbeat_interval=20)
        )


def test_defaults_redeliver_a_dead_workers_message_within_a_minute() -> None:
    broker = BrokerSettings()
    assert broker.visibility_timeout <= 60
    assert broker.heartbeat_interval() == broker.visibility_timeout / 3
    options = celery_broker_config(broker, AwsSettings())["broker_transport_options"]
    assert options["visibility_timeout"] == broker.visibility_timeout
    assert options[HEARTBEAT_INTERVAL_OPTION] == broker.heartbeat_interval()


def test_the_worker_bounds_extensions_by_its_longest_task() -> None:
    worker = WorkerSettings(http_connect_timeout=5, http_read_timeout=60)
    app = create_worker_app(worker, BrokerSettings(), AwsSettings())
    hold = app.conf.broker_transport_options[MAX_HOLD_OPTION]
    assert hold == worker.longest_task_seconds()
    assert 65 < hold < 900  # the HTTP call and publishing, not the retry countdown


def test_a_countdown_becomes_an_sqs_delay() -> None:
    assert delay_seconds(0.2) == 1
    assert delay_seconds(0) == 0
    assert delay_seconds(299.01) == 300
    assert delay_seconds(5000) == 900
    with pytest.raises(ValueError):
        WorkerSettings(retry_backoff_max=901)


def test_a_retry_is_published_with_a_delay_and_no_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    """Celery's countdown would make an ETA task that the receiving worker holds, unacked."""
    app = Celery("test", set_as_current=False)
    worker = WorkerSettings(
        ingest_url=f"http://127.0.0.1:{free_port()}",  # nobody listens: retried
        http_connect_timeout=1,
        retry_backoff_base=40,
        retry_backoff_max=40,
    )
    task = register_tasks(app, worker, dead_letters=lambda letter: None)
    sent: list[dict[str, Any]] = []

    def send_task(name: str, args: Any = None, kwargs: Any = None, **options: Any) -> None:
        sent.append({"name": name, "args": args, "kwargs": kwargs, **options})

    monkeypatch.setattr(app, "send_task", send_task)
    monkeypatch.setattr("random.uniform", lambda low, high: high)
    data, encoding = encode(events_json(EVENTS), TaskCompression.ZLIB)
    kwargs: dict[str, Any] = {"encoding": encoding, "event_count": 1}
    task.push_request(id="t1", retries=2, args=[data], kwargs=kwargs, called_directly=False)
    try:
        with pytest.raises(Retry):
            task.run(data, **kwargs)
    finally:
        task.pop_request()
    assert len(sent) == 1
    assert sent[0]["delay_seconds"] == 40
    assert sent[0].get("countdown") is None and sent[0].get("eta") is None
    assert sent[0]["retries"] == 3


# -- the transport against moto -----------------------------------------------------------------


@pytest.fixture
def queue(moto_url: str) -> Iterator[tuple[Any, str, BrokerSettings, AwsSettings]]:
    key, secret = LOCAL_ENDPOINT_CREDENTIALS
    sqs = boto3.client(
        "sqs",
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )
    name = f"heartbeat-{uuid.uuid4().hex[:8]}"
    # The queue's own attribute is long on purpose: the transport asks for its timeout itself.
    url = sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "600"})["QueueUrl"]
    broker = BrokerSettings(
        queue_name=name,
        dead_letter_queue_name=name + "-dlq",
        visibility_timeout=3,
        visibility_heartbeat_interval=1,
        wait_time_seconds=1,
    )
    yield sqs, url, broker, AwsSettings(aws_endpoint_url=moto_url)
    sqs.delete_queue(QueueUrl=url)


def visible(sqs: Any, url: str) -> list[dict[str, Any]]:
    """Receive what is visible now, and put it straight back."""
    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get(
        "Messages", []
    )
    for message in messages:
        sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
        )
    return messages


def consuming(broker: BrokerSettings, aws: AwsSettings, max_hold: float = 60.0) -> Connection:
    config = celery_broker_config(broker, aws)
    options = {**config["broker_transport_options"], MAX_HOLD_OPTION: max_hold}
    return Connection(
        config["broker_url"], transport=config["broker_transport"], transport_options=options
    )


def held_by(connection: Connection) -> Channel:
    channel = connection.default_channel
    assert isinstance(channel, Channel)
    return channel


def receive_one(connection: Connection, queue_name: str) -> Any:
    got: list[Any] = []
    consumer = Consumer(
        connection.default_channel,
        [Queue(queue_name, no_declare=True)],
        callbacks=[lambda body, message: got.append(message)],
        accept=["json"],
    )
    consumer.qos(prefetch_count=1)
    with consumer:
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                connection.drain_events(timeout=1)
    assert got, "nothing received"
    return got[0]


def publish(connection: Connection, queue_name: str, **properties: Any) -> None:
    producer = connection.Producer(serializer="json")
    producer.publish({"n": 1}, routing_key=queue_name, **properties)


def test_a_held_message_stays_hidden_past_the_timeout_and_is_back_once_the_holder_dies(
    queue: tuple[Any, str, BrokerSettings, AwsSettings],
) -> None:
    sqs, url, broker, aws = queue
    connection = consuming(broker, aws)
    publish(connection, broker.queue_name)
    message = receive_one(connection, broker.queue_name)
    channel = held_by(connection)
    time.sleep(broker.visibility_timeout * 2.5)  # 7.5 s: past two timeouts of 3 s
    assert visible(sqs, url) == []  # extended all along
    assert channel.heartbeat.held() == 1
    # The holder "dies": its heartbeat stops, nothing acknowledges the message.
    channel.heartbeat.stop()
    died = time.monotonic()
    while not visible(sqs, url):
        assert time.monotonic() - died < broker.visibility_timeout + 3, "not redelivered"
        time.sleep(0.2)
    # Within one timeout of the last extension, not the queue's 600 s.
    assert message.delivery_tag
    connection.release()


def test_an_acknowledged_message_is_let_go_and_deleted(
    queue: tuple[Any, str, BrokerSettings, AwsSettings],
) -> None:
    sqs, url, broker, aws = queue
    connection = consuming(broker, aws)
    publish(connection, broker.queue_name)
    message = receive_one(connection, broker.queue_name)
    channel = held_by(connection)
    assert channel.heartbeat.held() == 1
    message.ack()
    assert channel.heartbeat.held() == 0
    time.sleep(broker.visibility_timeout + 1)
    assert visible(sqs, url) == []
    connection.release()


def test_a_message_held_past_the_bound_is_redelivered(
    queue: tuple[Any, str, BrokerSettings, AwsSettings],
) -> None:
    sqs, url, broker, aws = queue
    connection = consuming(broker, aws, max_hold=2.0)
    publish(connection, broker.queue_name)
    receive_one(connection, broker.queue_name)
    started = time.monotonic()
    while not visible(sqs, url):
        assert time.monotonic() - started < 2.0 + broker.visibility_timeout + 3, "still hidden"
        time.sleep(0.2)
    assert held_by(connection).heartbeat.held() == 0
    connection.release()


def test_delay_seconds_reaches_sqs(queue: tuple[Any, str, BrokerSettings, AwsSettings]) -> None:
    sqs, url, broker, aws = queue
    connection = consuming(broker, aws)
    publish(connection, broker.queue_name, delay_seconds=2)
    sent = time.monotonic()
    assert visible(sqs, url) == []
    while not visible(sqs, url):
        assert time.monotonic() - sent < 6, "never visible"
        time.sleep(0.2)
    assert time.monotonic() - sent >= 1.5
    connection.release()


def test_ensure_queues_gives_an_existing_queue_the_new_timeout(
    queue: tuple[Any, str, BrokerSettings, AwsSettings],
) -> None:
    sqs, url, broker, _ = queue  # created with VisibilityTimeout 600
    try:
        ensure_queues(sqs, broker)
    except ClientError as exc:  # pragma: no cover - moto may accept the new attributes as well
        raise AssertionError(exc) from exc
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"])
    assert attributes["Attributes"]["VisibilityTimeout"] == str(broker.visibility_timeout)
    sqs.delete_queue(
        QueueUrl=sqs.get_queue_url(QueueName=broker.dead_letter_queue_name)["QueueUrl"]
    )
