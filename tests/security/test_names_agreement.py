"""The Flask extension and ingest judge a name the same way (issue 14, item 1).

What the extension refuses at ``init_app`` (or ``state.log``) is exactly what ingest would
refuse for any tenant, except the length under the tenant's prefix, which only ingest knows: a
name the extension takes is never refused later for a rule it could have applied, and a name it
refuses would never have been written. A leading ``/`` is one of AWS's conventions, not an
escape: ``/x`` and ``x`` are the same group under the prefix, for every ``x``.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cloudlog_ingest.confinement import Refusal, check_stream, resolve_group
from cloudlog_ingest.tenants import Tenant
from flask_cloudlog.extension import name_problem

ACME = Tenant(name="acme", key_sha256="0" * 64, log_group_prefix="acme/")
# An empty prefix: no length is lost to it, so the only rule left to ingest alone is gone too.
BARE = Tenant(name="bare", key_sha256="0" * 64, log_group_prefix="")

# What escapes and look-alikes are made of, and enough ordinary characters to build names.
PIECES = st.sampled_from(
    ["/", ".", "..", "a", "B", "7", "-", "_", "#", "aws", "AWS", "aWs/", ":", "*", " ", "\x00",
     "\n", "\u0435", "\uff0e", "\u200b", "\u202e", "\u2028", "\ufeff", "_rejected", "\u00e9",
     "\x85", "x" * 100]
)  # fmt: skip
NAMES = st.lists(PIECES, max_size=12).map("".join)


def ingest_group(tenant: Tenant, name: str) -> str:
    """The stored name, or "refused: <rule>"."""
    try:
        return resolve_group(tenant, name, field="log_group")
    except Refusal as refusal:
        return f"refused: {refusal.reason}"


def ingest_stream(name: str) -> str | None:
    try:
        check_stream(name, field="log_stream")
    except Refusal as refusal:
        return refusal.reason
    return None


@settings(max_examples=600, deadline=None)
@given(NAMES)
@example("/ecs/shop")
@example("/aws/x")
@example("//x")
@example("/")
@example("x" * 512)
@example("/" + "x" * 512)
def test_the_extension_refuses_a_group_exactly_when_ingest_would_for_any_tenant(
    name: str,
) -> None:
    refused_by_app = name_problem(name, None)
    bare = ingest_group(BARE, name)
    assert (refused_by_app is not None) == bare.startswith("refused: "), (name, bare)
    if refused_by_app is not None:
        assert bare == f"refused: {refused_by_app[1]}", "the same rule, in the same words"
        assert ingest_group(ACME, name).startswith("refused: "), "refused under any prefix"
    else:
        acme = ingest_group(ACME, name)
        assert acme.startswith("acme/") or "under your prefix" in acme, acme


@settings(max_examples=600, deadline=None)
@given(NAMES)
@example("_rejected")
@example("_REJECTED ")
@example("_r\u0435jected")
def test_the_extension_refuses_a_stream_exactly_when_ingest_would(name: str) -> None:
    refused_by_app = name_problem(None, name)
    refused_by_ingest = ingest_stream(name)
    assert (refused_by_app[1] if refused_by_app else None) == refused_by_ingest, name


@settings(max_examples=400, deadline=None)
@given(NAMES)
def test_a_leading_slash_is_the_same_group_under_the_prefix(name: str) -> None:
    """Never an escape: ``/x`` lands where ``x`` lands, or is refused where ``x`` is (and so
    is ``//x``, which would otherwise pass for ``/x``)."""
    plain = ingest_group(ACME, name)
    slashed = ingest_group(ACME, "/" + name)
    if name.startswith("/"):
        assert slashed.startswith("refused: "), (name, slashed)
    else:
        assert slashed == plain, (name, plain, slashed)
    if not slashed.startswith("refused: "):
        assert slashed.startswith("acme/") and "//" not in slashed and "/../" not in slashed


@pytest.mark.parametrize(
    "name", ["/ecs/shop", "/aws/lambda/x", "/../acme", "//acme", "/.", "/acme/../x"]
)
def test_a_leading_slash_never_reaches_outside_the_prefix(name: str) -> None:
    resolved = ingest_group(ACME, name)
    if not resolved.startswith("refused: "):
        assert resolved == "acme/" + name[1:]
        assert ".." not in resolved.split("/") and "//" not in resolved
