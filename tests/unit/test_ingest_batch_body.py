"""POST /v1/logs's hot path: raw-body validation, rendering, the fields bound, confinement per
distinct name and the answer, each held to what the reference (the typed model, json.dumps,
FastAPI's own serialisation) gives."""

from __future__ import annotations

import json
import math
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cloudlog_ingest import confinement
from cloudlog_ingest.confinement import Refusal, confine_all
from cloudlog_ingest.rendering import encode_fields, render_event, render_message
from cloudlog_ingest.routes import _batch_answer
from cloudlog_ingest.schemas import (
    INCOMING_BATCH,
    MAX_FIELDS_BYTES,
    BatchRequest,
    BatchResponse,
    EventResultOut,
    Level,
)
from cloudlog_ingest.tenants import Tenant
from cloudlog_writer.models import EventResult, Outcome, RejectReason
from tests.unit.test_ingest_app import FakeWriter, batch_event, running


def reference_render(
    *,
    level: str,
    message: str,
    event_id: str,
    logger: str | None = None,
    fields: dict[str, Any] | None = None,
) -> str:
    """render_message as it was: json.dumps of the document, a new encoder per call."""
    document: dict[str, Any] = {"level": level, "message": message, "event_id": event_id}
    if logger:
        document["logger"] = logger
    if fields:
        document["fields"] = fields
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"), default=str)


# Any text, lone surrogates and control characters included.
any_text = st.text(st.characters(exclude_categories=()))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats()  # nan and infinities too: json.dumps writes NaN, Infinity
    | any_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4)
    ),
    max_leaves=12,
)
# What default=str turns into text.
odd_values = st.sampled_from([b"bytes", {1, 2}, 1 + 2j, Decimal("1.50"), date(2024, 1, 2)])
fields_values = st.none() | st.dictionaries(any_text, json_values | odd_values, max_size=6)


@settings(max_examples=500, deadline=None)
@given(
    level=any_text,
    message=any_text,
    event_id=any_text,
    logger=st.none() | any_text,
    fields=fields_values,
)
def test_rendering_is_byte_identical_to_json_dumps(
    level: str, message: str, event_id: str, logger: str | None, fields: dict[str, Any] | None
) -> None:
    expected = reference_render(
        level=level, message=message, event_id=event_id, logger=logger, fields=fields
    )
    assert (
        render_message(
            level=level, message=message, event_id=event_id, logger=logger, fields=fields
        )
        == expected
    )
    encoded = encode_fields(fields) if fields else None
    assert render_event(level, message, event_id, logger, encoded) == expected


def test_rendering_of_a_typical_event() -> None:
    line = render_message(
        level="info",
        message='said "hé 🚀"\n',
        event_id="e1",
        logger="app",
        fields={"n": 1.5, "ok": True, "none": None, "nan": math.nan},
    )
    assert line == (
        '{"level":"info","message":"said \\"hé 🚀\\"\\n","event_id":"e1","logger":"app",'
        '"fields":{"n":1.5,"ok":true,"none":null,"nan":NaN}}'
    )


# --- the fast validation accepts exactly what the reference model accepts ----------------

field_values = st.sampled_from(
    [
        *(None, True, False, 0, -1, 1.0, 1.5, 10**30, "", "x", "12", " 7 ", "INFO", "Debug"),
        *("wArNiNg", "verbose", "a:b", "e-1.x", "a b", "x" * 129, "z" * 300, [], [1], {}),
        *({"k": "v"}, {"k": [1, {"n": None}]}, {str(i): i for i in range(101)}),
    ]
)
event_keys = ["event_id", "timestamp", "log_group", "log_stream", "message", "level", "logger"]


@st.composite
def event_objects(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = batch_event(draw(st.integers(0, 99)))
    for key in draw(st.lists(st.sampled_from([*event_keys, "fields", "extra"]), max_size=3)):
        if draw(st.booleans()):
            event.pop(key, None)
        else:
            event[key] = draw(field_values)
    return event


@settings(max_examples=500, deadline=None)
@given(
    body=st.one_of(
        st.fixed_dictionaries({"events": st.lists(event_objects(), max_size=4)}),
        st.sampled_from([{}, {"events": None}, {"events": {}}, [], "x", 1]),
    )
)
def test_fast_validation_agrees_with_the_reference_model(body: Any) -> None:
    raw = json.dumps(body).encode()
    try:
        reference: BatchRequest | None = BatchRequest.model_validate(json.loads(raw))
    except ValidationError:
        reference = None
    try:
        fast = INCOMING_BATCH.validate_json(raw)["events"]
    except ValidationError:
        assert reference is None
        return
    assert reference is not None, "the fast path accepted what the reference refuses"
    assert [
        (
            e["event_id"],
            e["timestamp"],
            e["log_group"],
            e["log_stream"],
            e["message"],
            e.get("level", Level.INFO),
            e.get("logger"),
            e.get("fields"),
        )
        for e in fast
    ] == [
        (
            e.event_id,
            e.timestamp,
            e.log_group,
            e.log_stream,
            e.message,
            e.level,
            e.logger,
            e.fields,
        )
        for e in reference.events
    ]


# --- the fields bound ---------------------------------------------------------------------


def fields_of_size(size: int, char: str = "y") -> dict[str, str]:
    """A ``fields`` whose json.dumps (default separators) is ``size`` UTF-8 bytes."""
    overhead = len(json.dumps({"b": ""}).encode())
    count, rest = divmod(size - overhead, len(char.encode()))
    assert rest == 0
    return {"b": char * count}


@pytest.mark.parametrize("char", ["y", "€"])
def test_fields_of_exactly_the_bound_are_written_and_one_byte_more_is_a_422(char: str) -> None:
    writer = FakeWriter()
    at_limit = fields_of_size(MAX_FIELDS_BYTES if char == "y" else MAX_FIELDS_BYTES - 1, char)
    over = fields_of_size(MAX_FIELDS_BYTES + 1 if char == "y" else MAX_FIELDS_BYTES + 2, char)
    with running(writer) as client:
        fits = client.post("/v1/logs", json={"events": [batch_event(0) | {"fields": at_limit}]})
        too_big = client.post("/v1/logs", json={"events": [batch_event(1) | {"fields": over}]})
    assert fits.status_code == 200
    stored = json.loads(writer.commits[0][0].message)["fields"]
    assert stored == at_limit
    assert too_big.status_code == 422
    size = len(json.dumps(over, ensure_ascii=False).encode())
    assert too_big.json()["errors"] == [
        f"events.0.fields: Value error, at most {MAX_FIELDS_BYTES} bytes of JSON (got {size})"
    ]
    assert too_big.json()["detail"][0]["loc"] == ["body", "events", 0, "fields"]
    assert [e.event_id for c in writer.commits for e in c] == ["e0"]


def test_the_bound_counts_json_dumps_default_separators_not_the_stored_compact_text() -> None:
    # ", " between items: 3 bytes a zero instead of the stored 2, so the stored text fits
    # in the bound and the counted one does not.
    zeros = {"l": [0] * 22_000}
    compact = len(encode_fields(zeros))
    counted = len(json.dumps(zeros).encode())
    assert compact <= MAX_FIELDS_BYTES < counted
    fits = {"l": [0] * 21_000}
    assert len(encode_fields(fits)) > MAX_FIELDS_BYTES // 2
    assert len(json.dumps(fits)) <= MAX_FIELDS_BYTES
    with running(FakeWriter()) as client:
        refused = client.post("/v1/logs", json={"events": [batch_event(0) | {"fields": zeros}]})
        written = client.post("/v1/logs", json={"events": [batch_event(1) | {"fields": fits}]})
    assert refused.status_code == 422
    assert refused.json()["errors"] == [
        f"events.0.fields: Value error, at most 65536 bytes of JSON (got {counted})"
    ]
    assert written.status_code == 200 and written.json()["written"] == 1


def test_fields_errors_come_with_the_schema_errors_in_order_and_before_confinement() -> None:
    big = fields_of_size(70_000)
    with running(FakeWriter()) as client:
        mixed = client.post(
            "/v1/logs",
            json={
                "events": [
                    batch_event(0) | {"fields": big},
                    batch_event(1) | {"timestamp": -1},
                    batch_event(2) | {"fields": big},
                ]
            },
        )
        # a refused name in another event: the fields error is answered first, as before
        with_bad_name = client.post(
            "/v1/logs",
            json={
                "events": [batch_event(0) | {"log_group": "../x"}, batch_event(1) | {"fields": big}]
            },
        )
    assert mixed.status_code == 422
    assert [error.split(":")[0] for error in mixed.json()["errors"]] == [
        "events.0.fields",
        "events.1.timestamp",
        "events.2.fields",
    ]
    assert with_bad_name.status_code == 422
    assert with_bad_name.json()["errors"][0].startswith("events.1.fields: Value error, at most")


# --- confinement, once per distinct name --------------------------------------------------

TENANT = Tenant(name="acme", key_sha256="0" * 64, log_group_prefix="acme/")


def test_each_distinct_group_and_stream_is_resolved_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    resolve = confinement.resolve_group

    def counting(tenant: Tenant, name: str, *, field: str) -> str:
        calls.append(name)
        return resolve(tenant, name, field=field)

    monkeypatch.setattr(confinement, "resolve_group", counting)
    names = [("a/b", "x"), ("a/b", "x"), ("c", "x"), ("a/b", "y"), ("a/b", "x"), ("c", "x")] * 300
    resolved = confine_all(TENANT, names, field_prefix="events.")
    assert resolved == [("acme/" + group, stream) for group, stream in names]
    assert sorted(calls) == ["a/b", "a/b", "c"]  # three distinct (group, stream) pairs


@pytest.mark.parametrize(
    ("names", "refused"),
    [
        ([("ok", "s"), ("ok", "s"), ("../x", "s"), ("aws/y", "s")], "events.2.log_group"),
        ([("ok", "s"), ("ok", "a:b"), ("../x", "s")], "events.1.log_stream"),
        ([("ok", "s"), ("bad!", "a:b")], "events.1.log_group"),  # the group is checked first
        ([("../x", "s"), ("../x", "s")], "events.0.log_group"),
        ([("ok", "s"), ("ok", "_rejected"), ("ok", "_rejected")], "events.1.log_stream"),
    ],
)
def test_the_first_refused_event_is_named(names: list[tuple[str, str]], refused: str) -> None:
    with pytest.raises(Refusal) as raised:
        confine_all(TENANT, names, field_prefix="events.")
    assert raised.value.field == refused


def test_a_refused_name_in_a_batch_is_answered_for_that_event_alone() -> None:
    writer = FakeWriter()
    with running(writer) as client:
        events = [batch_event(0), batch_event(1), batch_event(2) | {"log_stream": "a*b"}]
        response = client.post("/v1/logs", json={"events": events})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["written", "written", "rejected"]
    assert results[2]["reason"] == "forbidden_name"
    assert results[2]["detail"] == "events.2.log_stream: may not contain '*'"
    written = [(e.event_id, e.log_group, e.log_stream) for c in writer.commits for e in c]
    assert [w[0] for w in written[:2]] == ["e0", "e1"]
    assert written[2][0] == "e2.rejected" and written[2][1:] == ("acme/_cloudlog", "_rejected")


# --- the body: parsed from the raw bytes, answered as FastAPI answered a typed body -----------


def post_raw(
    client: Any, body: bytes, *, key: bool = True, content_type: str = "application/json"
) -> Any:
    sent = {"content-type": content_type}
    if key:
        sent.update(client.headers)
    return client.client.post("/v1/logs", content=body, headers=sent)


def test_schema_errors_are_422s_whose_location_starts_with_body() -> None:
    events = [batch_event(0) | {"timestamp": "soon"}, batch_event(1) | {"level": "LOUD"}]
    with running(FakeWriter()) as client:
        response = post_raw(client, json.dumps({"events": events}).encode())
    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [
        ["body", "events", 0, "timestamp"],
        ["body", "events", 1, "level"],
    ]
    assert [error["type"] for error in response.json()["detail"]] == ["int_parsing", "enum"]


def test_a_body_that_is_not_json_is_refused_once_authenticated() -> None:
    """Authentication comes from the headers, before the body is read (issue 14, item 7):
    without a key every body is a 401; with one, what does not parse is refused as before."""
    with running(FakeWriter()) as client:
        no_key = [
            post_raw(client, body, key=False)
            for body in (b'{"events": [', b'{"events": "\xff"}', b'{"events": []}')
        ]
        not_json = post_raw(client, b'{"events": [')
        not_utf8 = post_raw(client, b'{"events": "\xff"}')
    assert [response.status_code for response in no_key] == [401] * 3
    valid_but_no_key = no_key[2]
    assert not_json.status_code == 422
    assert not_json.json()["detail"] == [
        {"loc": ["body", 12], "msg": "JSON decode error", "type": "json_invalid"}
    ]
    assert not_utf8.status_code == 400
    assert not_utf8.json() == {"detail": "There was an error parsing the body"}
    assert valid_but_no_key.status_code == 401


def test_empty_or_non_json_bodies_are_422s_after_authentication() -> None:
    body = json.dumps({"events": [batch_event(0)]}).encode()
    with running(FakeWriter()) as client:
        empty = post_raw(client, b"")
        empty_no_key = post_raw(client, b"", key=False)
        plain_text = post_raw(client, body, content_type="text/plain")
    assert empty.status_code == 422
    assert empty.json()["detail"] == [{"loc": ["body"], "msg": "Field required", "type": "missing"}]
    assert empty_no_key.status_code == 401
    assert plain_text.status_code == 422
    assert [error["loc"] for error in plain_text.json()["detail"]] == [["body"]]


def test_bodies_only_json_loads_reads_are_answered_as_before() -> None:
    """pydantic's parser refuses these; the reference path takes them as FastAPI did."""
    writer = FakeWriter()
    surrogate = [batch_event(0) | {"message": "lone \ud800"}]
    with running(writer) as client:
        bom = post_raw(client, b"\xef\xbb\xbf" + json.dumps({"events": [batch_event(1)]}).encode())
        utf16 = post_raw(client, json.dumps({"events": [batch_event(2)]}).encode("utf-16"))
        suffixed = post_raw(
            client,
            json.dumps({"events": [batch_event(3)]}).encode(),
            content_type="application/vnd.cloudlog+json; charset=utf-8",
        )
        lone = post_raw(client, json.dumps({"events": surrogate}).encode())
    assert [r.status_code for r in (bom, utf16, suffixed)] == [200] * 3
    assert [e.event_id for commit in writer.commits for e in commit] == ["e1", "e2", "e3"]
    assert lone.status_code == 422
    assert lone.json()["detail"][0]["loc"] == ["body", "events", 0, "message"]
    assert lone.json()["detail"][0]["type"] == "string_unicode"


# --- the answer -------------------------------------------------------------------------------


def reference_answer(results: list[EventResult]) -> bytes:
    """What FastAPI sent for the BatchResponse model: pydantic's JSON."""
    written = sum(1 for result in results if result.written)
    return (
        BatchResponse(
            written=written,
            rejected=len(results) - written,
            results=[
                EventResultOut(
                    event_id=result.event_id,
                    status=result.outcome.value,
                    reason=result.reason.value if result.reason else None,
                    detail=result.detail,
                )
                for result in results
            ],
        )
        .model_dump_json()
        .encode()
    )


printable_text = st.text(st.characters(exclude_categories=["Cs"]))  # pydantic refuses surrogates
results_strategy = st.lists(
    st.builds(
        EventResult,
        event_id=printable_text,
        outcome=st.sampled_from(Outcome),
        reason=st.none() | st.sampled_from(RejectReason),
        detail=st.none() | printable_text,
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(results=results_strategy)
def test_the_answer_is_the_bytes_pydantic_made_of_the_model(results: list[EventResult]) -> None:
    response = _batch_answer(results)
    assert response.body == reference_answer(results)
    assert response.media_type == "application/json"


def test_a_batch_answer_through_the_app() -> None:
    writer = FakeWriter()
    with running(writer) as client:
        events = [batch_event(0), batch_event(1, "reject me"), batch_event(2)]
        response = client.post("/v1/logs", json={"events": events})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "written": 2,
        "rejected": 1,
        "results": [
            {"event_id": "e0", "status": "written", "reason": None, "detail": None},
            {"event_id": "e1", "status": "rejected", "reason": "invalid", "detail": "told to"},
            {"event_id": "e2", "status": "written", "reason": None, "detail": None},
        ],
    }
    results = [
        EventResult("e0", Outcome.WRITTEN),
        EventResult("e1", Outcome.REJECTED, RejectReason.INVALID, "told to"),
        EventResult("e2", Outcome.WRITTEN),
    ]
    assert response.content == reference_answer(results)


# --- the OpenAPI document still describes the typed body --------------------------------------


def test_the_openapi_document_describes_the_batch_body_and_answer() -> None:
    with running(FakeWriter()) as client:
        document = client.client.get("/openapi.json").json()
    operation = document["paths"]["/v1/logs"]["post"]
    assert operation["operationId"] == "post_batch_v1_logs_post"
    assert operation["requestBody"] == {
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BatchRequest"}}},
        "required": True,
    }
    assert set(operation["responses"]) == {"200", "422"}
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/BatchResponse"
    }
    assert operation["security"] == [{"HTTPBearer": []}]
    schemas = document["components"]["schemas"]
    event = schemas["EventIn"]
    assert event["required"] == ["event_id", "timestamp", "log_group", "log_stream", "message"]
    assert event["properties"]["fields"]["anyOf"][0]["maxProperties"] == 100
    assert schemas["BatchRequest"]["properties"]["events"]["minItems"] == 1
    assert list(document["paths"]["/v1/logs"]) == ["post"]  # one operation, the documented one
