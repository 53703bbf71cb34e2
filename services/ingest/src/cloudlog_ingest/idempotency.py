"""Idempotency shared by every ingest replica: one DynamoDB record per delivered batch.

A batch (one ``POST /v1/logs``) is known by its key: SHA-256 of the tenant and of its events'
(group, stream, event_id), sorted, so a redelivery is recognised whichever replica receives it,
whatever header it carries and in whatever order its events come. Records, partition key
``pk = "batch#<hex>"``:

- ``in_progress``: claimed by ``owner`` until ``lease_until`` (epoch seconds). Claims are
  conditional Puts (``attribute_not_exists(pk)``), all the claims of one group commit in one
  ``TransactWriteItems`` (at most 100 items).
- ``done``: written, with the counts and the rejected events (``rejected_json``: event id,
  reason, detail; absent when it would not fit, see ``MAX_RESULTS_JSON``).

What a claim finds (``Claim``): nothing (``FRESH``: write it); ``done`` (``DONE``: answer from the
record, write nothing); a live lease (``BUSY``: 429 with Retry-After, the worker retries); a
lease that ended, its owner presumably dead mid-write (``TAKEN_OVER`` by a conditional PutItem
on the lease it saw: read back from CloudWatch what was already written, write the rest).

Cost (docs/scaling.md, DynamoDB): marking a batch done is deferred and rides on the next
commit's claim transaction (or a ``BatchWriteItem`` of up to 25 items when no commit comes within
``done_linger_seconds``), so a steady stream of 1,000-event tasks costs at most one request per
1,000 events, fewer when a commit carries several tasks. Deferring is safe: until its ``done``
lands a batch is ``in_progress`` under a lease, and if the replica dies first, the lease ends
and the next replica reads back what is already in CloudWatch. Each call is counted in
``cloudlog_ingest_dynamodb_requests_total{op}``. Records expire through DynamoDB's TTL on
``expires_at`` (epoch seconds), which must outlive the redelivery horizon.

The lease must outlast the longest commit (the writer's retries, ``CLOUDLOG_MAX_RETRY_SECONDS``):
a replica still writing when its lease ends could see its batch taken over and written twice.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from botocore.config import Config
from prometheus_client import CollectorRegistry, Counter

from cloudlog_core.aws import AwsSettings, session_for
from cloudlog_writer.models import EventResult, LogEvent, Outcome, RejectReason

logger = logging.getLogger(__name__)

KEY_ATTRIBUTE: Final = "pk"
TTL_ATTRIBUTE: Final = "expires_at"
IN_PROGRESS: Final = "in_progress"
DONE: Final = "done"
MAX_TRANSACT_ITEMS: Final = 100  # TransactWriteItems (AWS DynamoDB quotas)
MAX_BATCH_WRITE_ITEMS: Final = 25  # BatchWriteItem
# The rejected events a done record keeps, as JSON, at most (100 items x 32 KB stays well
# inside a transaction's 4 MB). A batch with more is answered by writing it again (read back
# first), as after a takeover.
MAX_RESULTS_JSON: Final = 32 * 1024
# Attempts at one transaction that keeps being cancelled by conflicts (two replicas claiming
# the same batch at the same moment, say).
MAX_TRANSACT_ATTEMPTS: Final = 4
DUPLICATE_DETAIL: Final = "duplicate: already written"


class ClaimState(enum.Enum):
    FRESH = "fresh"
    TAKEN_OVER = "taken_over"
    DONE = "done"
    BUSY = "busy"


@dataclass(frozen=True, slots=True)
class Claim:
    state: ClaimState
    retry_after: int = 0  # BUSY: seconds until the lease ends
    # DONE: event id -> (reason, detail) of the events rejected; None: not kept (write again)
    rejected: dict[str, tuple[str | None, str | None]] | None = None

    @property
    def owned(self) -> bool:
        """This replica holds the lease: it must write, then ``complete`` or ``release``."""
        return self.state in (ClaimState.FRESH, ClaimState.TAKEN_OVER)

    @property
    def must_write(self) -> bool:
        return self.owned or (self.state is ClaimState.DONE and self.rejected is None)

    @property
    def must_read_back(self) -> bool:
        """Part of the batch may be in CloudWatch already: read it back before writing."""
        return self.state is ClaimState.TAKEN_OVER or (
            self.state is ClaimState.DONE and self.rejected is None
        )


class BatchInProgress(Exception):
    """Another delivery of this batch is being written (a live lease): retry later."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"this batch is being written by another request; retry in {retry_after} s"
        )
        self.retry_after = retry_after


def batch_key(tenant: str, events: Iterable[LogEvent]) -> str:
    """The batch's identity: the same events of the same tenant give the same key."""
    digest = hashlib.sha256(tenant.encode() + b"\x00")
    for line in sorted(f"{e.log_group}\x00{e.log_stream}\x00{e.event_id}" for e in events):
        digest.update(line.encode("utf-8", "surrogatepass") + b"\x01")
    return digest.hexdigest()


def answer_from_record(events: Sequence[LogEvent], claim: Claim) -> list[EventResult]:
    """The answer a ``done`` batch gets again: its rejected events as they were rejected, every
    other one written (already)."""
    rejected = claim.rejected or {}
    results = []
    for event in events:
        found = rejected.get(event.event_id)
        if found is None:
            results.append(EventResult(event.event_id, Outcome.WRITTEN, None, DUPLICATE_DETAIL))
        else:
            reason, detail = found
            results.append(
                EventResult(
                    event.event_id,
                    Outcome.REJECTED,
                    RejectReason(reason) if reason else None,
                    detail,
                )
            )
    return results


# The table the embedded emulator creates (`cloudlog emulator`); on AWS the stack names it.
DEFAULT_IDEMPOTENCY_TABLE = "cloudlog-idempotency"


def ensure_idempotency_table(client: Any, table: str) -> bool:
    """Create the table (on-demand, TTL on ``expires_at``) unless it exists; True if created.
    For emulators and development: on AWS the table comes from infra/aws/cloudlog.yaml."""
    try:
        client.describe_table(TableName=table)
        return False
    except client.exceptions.ResourceNotFoundException:
        pass
    try:
        client.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": KEY_ATTRIBUTE, "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": KEY_ATTRIBUTE, "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
    except client.exceptions.ResourceInUseException:
        return False  # another replica created it meanwhile
    client.get_waiter("table_exists").wait(TableName=table, WaiterConfig={"Delay": 0.2})
    client.update_time_to_live(
        TableName=table,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
    )
    return True


def make_dynamodb_client(settings: AwsSettings | None = None) -> Any:
    config = Config(
        connect_timeout=2.0,
        read_timeout=10.0,
        retries={"total_max_attempts": 3, "mode": "standard"},
        max_pool_connections=32,
    )
    settings = settings or AwsSettings()
    return session_for(settings).client(
        "dynamodb", endpoint_url=settings.aws_endpoint_url or None, config=config
    )


@dataclass(slots=True)
class _PendingDone:
    key: str
    item: dict[str, Any]
    since: float
    rejected: dict[str, tuple[str | None, str | None]] | None = field(default=None)


class BatchIdempotency:
    """Claims and completes batches in one DynamoDB table shared by every replica.

    Thread-safe: the pipeline's commit threads call ``claim``, ``complete`` and ``release``.
    """

    def __init__(
        self,
        client: Any,
        table: str,
        *,
        lease_seconds: float = 60.0,
        ttl_seconds: float = 6 * 3600.0,
        done_linger_seconds: float = 5.0,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._client = client
        self._table = table
        self._lease = lease_seconds
        self._ttl = ttl_seconds
        self._linger = done_linger_seconds
        self.owner = owner or uuid.uuid4().hex
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, _PendingDone] = {}
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self.requests = Counter(
            "cloudlog_ingest_dynamodb_requests",
            "DynamoDB requests made by the idempotency store, by operation.",
            ["op"],
            registry=registry,
        )

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Flush deferred ``done`` marks that no commit took along within the linger."""
        if self._flusher is None:
            self._flusher = threading.Thread(
                target=self._flush_loop, name="cloudlog-idempotency", daemon=True
            )
            self._flusher.start()

    def close(self) -> None:
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join(timeout=10)
            self._flusher = None
        try:
            self.flush()
        except Exception:
            logger.exception("idempotency: could not mark batches done at shutdown")

    def _flush_loop(self) -> None:
        while not self._stop.wait(max(0.05, self._linger / 2)):
            with self._lock:
                oldest = min((p.since for p in self._pending.values()), default=None)
            if oldest is not None and self._clock() - oldest >= self._linger:
                try:
                    self.flush()
                except Exception:
                    logger.exception("idempotency: could not mark batches done (retried)")

    # -- the commit path --------------------------------------------------------------------

    def claim(self, keys: Sequence[str]) -> list[Claim]:
        """Claim each batch (keys may repeat: a repeat is BUSY behind the first), carrying the
        deferred ``done`` marks along in the same transaction."""
        claims: dict[str, Claim] = {}
        wanted: list[str] = []
        with self._lock:
            for key in keys:
                pending = self._pending.get(key)
                if pending is not None:  # done here, not yet in the table
                    claims[key] = Claim(ClaimState.DONE, rejected=pending.rejected)
                elif key not in claims and key not in wanted:
                    wanted.append(key)
            dones = list(self._pending.values())
        if wanted:
            self._claim_in_table(wanted, dones, claims)
        elif dones and len(dones) >= MAX_BATCH_WRITE_ITEMS:
            self.flush()
        answered: list[Claim] = []
        seen: set[str] = set()
        for key in keys:
            claim = claims[key]
            if key in seen and claim.must_write:
                claim = Claim(ClaimState.BUSY, retry_after=1)
            seen.add(key)
            answered.append(claim)
        return answered

    def _claim_in_table(
        self, keys: list[str], dones: list[_PendingDone], claims: dict[str, Claim]
    ) -> None:
        now = self._clock()
        room = max(0, MAX_TRANSACT_ITEMS - len(keys))
        along, later = dones[:room], dones[room:]
        if later:  # more marks than fit beside the claims: written on their own
            self._batch_write(later)
        for start in range(0, len(keys), MAX_TRANSACT_ITEMS):
            chunk = keys[start : start + MAX_TRANSACT_ITEMS]
            self._transact(chunk, along if start == 0 else [], now, claims)

    def _claim_item(self, key: str, now: float) -> dict[str, Any]:
        return {
            KEY_ATTRIBUTE: {"S": f"batch#{key}"},
            "status": {"S": IN_PROGRESS},
            "owner": {"S": self.owner},
            "lease_until": {"N": f"{now + self._lease:.3f}"},
            TTL_ATTRIBUTE: {"N": str(int(now + self._ttl))},
        }

    def _transact(
        self,
        keys: list[str],
        dones: list[_PendingDone],
        now: float,
        claims: dict[str, Claim],
    ) -> None:
        remaining = list(keys)
        for attempt in range(MAX_TRANSACT_ATTEMPTS):
            items: list[dict[str, Any]] = [
                {"Put": {"TableName": self._table, "Item": done.item}} for done in dones
            ]
            items += [
                {
                    "Put": {
                        "TableName": self._table,
                        "Item": self._claim_item(key, now),
                        "ConditionExpression": "attribute_not_exists(#pk)",
                        "ExpressionAttributeNames": {"#pk": KEY_ATTRIBUTE},
                        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                    }
                }
                for key in remaining
            ]
            if not remaining:
                return  # the marks stay deferred: the next claim or the flusher takes them
            self.requests.labels("TransactWriteItems").inc()
            try:
                self._client.transact_write_items(TransactItems=items)
            except self._client.exceptions.TransactionCanceledException as exc:
                reasons = exc.response.get("CancellationReasons") or []
                claim_reasons = reasons[len(dones) :]
                still: list[str] = []
                for key, reason in zip(remaining, claim_reasons, strict=False):
                    if reason.get("Code") == "ConditionalCheckFailed":
                        claims[key] = self._existing(key, reason.get("Item") or {}, now)
                    else:
                        still.append(key)
                if len(claim_reasons) < len(remaining):
                    still += remaining[len(claim_reasons) :]
                remaining = still
                if attempt + 1 < MAX_TRANSACT_ATTEMPTS:
                    time.sleep(0.02 * (attempt + 1))
                continue
            for key in remaining:
                claims[key] = Claim(ClaimState.FRESH)
            self._forget(dones)
            return
        raise RuntimeError(f"could not claim {len(remaining)} batches: transactions kept failing")

    def _existing(self, key: str, item: dict[str, Any], now: float) -> Claim:
        """What to do about a batch whose record exists (``item``: as the failed claim saw it)."""
        status = item.get("status", {}).get("S")
        if status == DONE:
            return Claim(ClaimState.DONE, rejected=_rejected_of(item))
        lease_until = float(item.get("lease_until", {}).get("N", "0"))
        if lease_until > now:
            return Claim(ClaimState.BUSY, retry_after=max(1, math.ceil(lease_until - now)))
        return self._take_over(key, item["lease_until"]["N"], now)

    def _take_over(self, key: str, seen_lease: str, now: float) -> Claim:
        """Claim a batch whose lease ended, if no other replica did first."""
        self.requests.labels("PutItem").inc()
        try:
            self._client.put_item(
                TableName=self._table,
                Item=self._claim_item(key, now),
                ConditionExpression="#s = :in_progress AND lease_until = :seen",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={
                    ":in_progress": {"S": IN_PROGRESS},
                    ":seen": {"N": seen_lease},
                },
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self._client.exceptions.ConditionalCheckFailedException as exc:
            item = exc.response.get("Item") or {}
            if item.get("status", {}).get("S") == DONE:
                return Claim(ClaimState.DONE, rejected=_rejected_of(item))
            return Claim(ClaimState.BUSY, retry_after=max(1, math.ceil(self._lease)))
        logger.warning("idempotency: took over batch %s after its lease ended", key[:16])
        return Claim(ClaimState.TAKEN_OVER)

    def complete(self, key: str, results: Sequence[EventResult]) -> None:
        """Mark a claimed batch done (deferred: see the module's docstring)."""
        now = self._clock()
        rejected = {
            r.event_id: (r.reason.value if r.reason else None, r.detail)
            for r in results
            if r.outcome is not Outcome.WRITTEN
        }
        item: dict[str, Any] = {
            KEY_ATTRIBUTE: {"S": f"batch#{key}"},
            "status": {"S": DONE},
            "owner": {"S": self.owner},
            "written": {"N": str(len(results) - len(rejected))},
            "rejected": {"N": str(len(rejected))},
            TTL_ATTRIBUTE: {"N": str(int(now + self._ttl))},
        }
        kept: dict[str, tuple[str | None, str | None]] | None = rejected
        if rejected:
            text = json.dumps(rejected, separators=(",", ":"), ensure_ascii=False)
            if len(text.encode("utf-8", "surrogatepass")) <= MAX_RESULTS_JSON:
                item["rejected_json"] = {"S": text}
            else:
                item["rejected_json_dropped"] = {"BOOL": True}
                kept = None
        with self._lock:
            self._pending[key] = _PendingDone(key, item, now, kept)

    def release(self, keys: Iterable[str]) -> None:
        """Give up claims whose commit failed, so a retry need not wait for the lease."""
        for key in keys:
            self.requests.labels("DeleteItem").inc()
            try:
                self._client.delete_item(
                    TableName=self._table,
                    Key={KEY_ATTRIBUTE: {"S": f"batch#{key}"}},
                    ConditionExpression="#s = :in_progress AND #o = :me",
                    ExpressionAttributeNames={"#s": "status", "#o": "owner"},
                    ExpressionAttributeValues={
                        ":in_progress": {"S": IN_PROGRESS},
                        ":me": {"S": self.owner},
                    },
                )
            except self._client.exceptions.ConditionalCheckFailedException:
                pass
            except Exception:
                logger.exception("idempotency: could not release batch %s", key[:16])

    def flush(self) -> None:
        """Write every deferred ``done`` mark now."""
        with self._lock:
            dones = list(self._pending.values())
        if dones:
            self._batch_write(dones)

    def _batch_write(self, dones: list[_PendingDone]) -> None:
        for start in range(0, len(dones), MAX_BATCH_WRITE_ITEMS):
            chunk = dones[start : start + MAX_BATCH_WRITE_ITEMS]
            requests: list[dict[str, Any]] = [{"PutRequest": {"Item": d.item}} for d in chunk]
            for attempt in range(5):
                self.requests.labels("BatchWriteItem").inc()
                answer = self._client.batch_write_item(RequestItems={self._table: requests})
                requests = (answer.get("UnprocessedItems") or {}).get(self._table) or []
                if not requests:
                    break
                time.sleep(0.05 * 2**attempt)
            if requests:
                raise RuntimeError(f"{len(requests)} done marks left unprocessed")
            self._forget(chunk)

    def _forget(self, dones: list[_PendingDone]) -> None:
        with self._lock:
            for done in dones:
                if self._pending.get(done.key) is done:
                    del self._pending[done.key]


def _rejected_of(item: dict[str, Any]) -> dict[str, tuple[str | None, str | None]] | None:
    if "rejected_json_dropped" in item:
        return None
    text = item.get("rejected_json", {}).get("S")
    if not text:
        return {}
    return {event_id: (pair[0], pair[1]) for event_id, pair in json.loads(text).items()}
