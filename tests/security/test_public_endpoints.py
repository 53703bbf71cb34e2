"""What ingest answers without a tenant key (README, Threat model).

Public: ``/healthz``, ``/readyz`` (check names and outcomes only), ``/docs``, ``/redoc`` and
``/openapi.json`` (the static description of the public API; ``CLOUDLOG_INGEST_DOCS=false``
turns them off). ``/metrics`` names tenants, so it is served only to the scraper's token
(``CLOUDLOG_INGEST_METRICS_TOKEN``): 404 without one configured, 401 without it presented; a
tenant's API key does not open it. Every route the app has (the OpenAPI ones and the others) is
called without a key, with a wrong key and with a tenant's key used as a scrape token: no answer
names a tenant, its prefix, or says how many there are.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from starlette.routing import Route

from cloudlog_ingest.settings import IngestSettings
from tests.unit.test_ingest_app import METRICS_TOKEN, FakeWriter, batch_event, running

TENANT = "acme"  # the tenant running() makes; its prefix is "acme/"


def every_route(client: Any) -> list[tuple[str, str]]:
    """(method, path) of every route of the app, whether in the OpenAPI schema or not."""
    pairs: set[tuple[str, str]] = set()
    routes = list(client.app.routes)
    while routes:
        route = routes.pop()
        included = getattr(route, "original_router", None)  # FastAPI >= 0.120: included routers
        if included is not None:
            routes.extend(included.routes)
        elif isinstance(route, Route):
            pairs.update((method, route.path) for method in route.methods or {"GET"})
    pairs = {(method, path) for method, path in pairs if method != "HEAD"}
    schema = client.client.get("/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method in operations:
            pairs.add((method.upper(), path))
    return sorted(pairs)


def leaks(response: Any) -> list[str]:
    text = response.text + " ".join(f"{k}: {v}" for k, v in response.headers.items())
    shown = [needle for needle in (TENANT, f"{TENANT}/") if needle in text]
    if "tenants" in text and "loaded" in text:
        shown.append("tenant count")
    return shown


@pytest.mark.parametrize("token", [METRICS_TOKEN, None], ids=["token-set", "no-token"])
def test_no_unauthenticated_answer_names_a_tenant(token: str | None) -> None:
    with running(FakeWriter(), cloudwatch_probe=lambda: None, metrics_token=token) as client:
        # Traffic, so that the metrics hold the tenant's name (checked with the token below).
        assert client.post("/v1/logs", json={"events": [batch_event(0)]}).status_code == 200
        routes = every_route(client)
        assert {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")} <= set(routes)
        assert {("POST", "/v1/logs"), ("POST", "/logs"), ("GET", "/docs")} <= set(routes)
        api_key = client.headers["Authorization"]
        callers = {
            "anonymous": {},
            "wrong key": {"Authorization": "Bearer cl_not-a-key"},
            "tenant key": {"Authorization": api_key},  # a tenant is not the scraper
            "basic": {"Authorization": f"Basic {METRICS_TOKEN}"},
        }
        seen = {}
        for method, path in routes:
            for who, headers in callers.items():
                if who == "tenant key" and path in {"/logs", "/v1/logs"}:
                    continue  # authenticated: a tenant sees its own names
                response = client.client.request(method, path, headers=headers, json={})
                seen[who, method, path] = response.status_code
                assert leaks(response) == [], (who, method, path, response.text[:500])
        metrics_status = 404 if token is None else 401
        for who in callers:
            assert seen[who, "GET", "/metrics"] == metrics_status, who
            assert seen[who, "GET", "/healthz"] == 200
            assert seen[who, "GET", "/readyz"] == 200
        assert seen["anonymous", "POST", "/v1/logs"] == 401
        if token is not None:
            scraped = client.client.get("/metrics", headers=client.scraper)
            assert scraped.status_code == 200
            assert f'tenant="{TENANT}"' in scraped.text, "the scan above was meaningful"
            assert api_key.removeprefix("Bearer ") not in scraped.text


def test_metrics_without_the_token_answer_401_with_a_bearer_challenge() -> None:
    with running(FakeWriter(), cloudwatch_probe=lambda: None) as client:
        anonymous = client.client.get("/metrics")
        wrong = client.client.get("/metrics", headers={"Authorization": "Bearer " + "x" * 24})
        prefix = client.client.get(
            "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN[:-1]}"}
        )
        right = client.client.get("/metrics", headers={"Authorization": f"bearer {METRICS_TOKEN}"})
    for refused in (anonymous, wrong, prefix):
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"] == "Bearer"
        assert "cloudlog_" not in refused.text
    assert right.status_code == 200 and "cloudlog_ingest_events_accepted" in right.text


def test_readyz_shows_check_names_and_outcomes_and_details_only_to_the_scraper() -> None:
    with running(FakeWriter(), cloudwatch_probe=lambda: None) as client:
        state = client.app.state  # type: ignore[attr-defined]
        state.tenants_reload_seconds = 0.0
        path = state.tenants.path
        good = path.read_text()
        public_ok = client.client.get("/readyz").json()
        path.write_text(good[: len(good) // 2])  # truncated: degraded
        public_degraded = client.client.get("/readyz")
        operator_degraded = client.client.get("/readyz", headers=client.scraper).json()
        path.write_text(good)
    assert public_ok["checks"] == {
        name: {"ok": True, "degraded": False} for name in ("pending", "cloudwatch", "tenants")
    }
    body = public_degraded.json()
    assert public_degraded.status_code == 200 and body["degraded"] == ["tenants"]
    assert body["checks"]["tenants"] == {"ok": True, "degraded": True}
    assert str(path) not in public_degraded.text and "detail" not in public_degraded.text
    assert "is corrupt" in operator_degraded["checks"]["tenants"]["detail"]


def test_docs_and_schema_can_be_turned_off() -> None:
    with running(FakeWriter(), cloudwatch_probe=lambda: None, docs=False) as client:
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
            assert client.client.get(path).status_code == 404, path
        assert client.client.get("/healthz").status_code == 200
        assert client.post("/v1/logs", json={"events": [batch_event(0)]}).status_code == 200


def test_docs_are_on_by_default_and_the_schema_is_the_public_api_only() -> None:
    with running(FakeWriter(), cloudwatch_probe=lambda: None) as client:
        schema = client.client.get("/openapi.json").json()
        docs = client.client.get("/docs")
    assert set(schema["paths"]) == {"/healthz", "/logs", "/v1/logs"}
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_the_metrics_token_setting() -> None:
    from_env = IngestSettings.model_validate  # as the environment gives it: a string
    assert from_env({"metrics_token": ""}).metrics_token is None
    assert IngestSettings().metrics_token is None
    with pytest.raises(ValidationError, match="at least 16"):
        from_env({"metrics_token": "short"})
    settings = from_env({"metrics_token": METRICS_TOKEN})
    assert METRICS_TOKEN not in repr(settings)
    assert IngestSettings().docs is True
