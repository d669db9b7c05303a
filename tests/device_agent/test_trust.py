"""The device's root of trust: publisher keys rotate through root-signed keys documents the server relays.

Each test is named after what it defends against; the server is the fake one, so that it can lie.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest

import artifact as A
from tests.support import trust_keys, trust_root

from .conftest import AgentThread, wait_until
from .fakeserver import FakeServer
from .models import Release, make_release, png_bytes


@pytest.fixture(scope="module")
def root_key() -> A.SigningKey:
    return A.generate_key()


@pytest.fixture(scope="module")
def root1(root_key: A.SigningKey) -> bytes:
    return trust_root(1, [root_key], [root_key])


def chain(roots: list[bytes], keys: bytes | None) -> dict[str, Any]:
    keys_doc = None if keys is None else json.loads(keys)
    tag = f"r{len(roots)}-k{0 if keys_doc is None else keys_doc['signed']['version']}"
    return {"tag": tag, "roots": [json.loads(r) for r in roots], "keys": keys_doc}


@pytest.fixture()
def rooted(run_agent: Callable[..., AgentThread], root1: bytes) -> Callable[..., AgentThread]:
    """Agents that trust the root only (no --trust keys)."""

    def start(**overrides: Any) -> AgentThread:
        return run_agent(trust=None, root=A.TrustState.from_root(root1), **overrides)

    return start


@pytest.fixture()
def serve_keys(server: FakeServer, root_key: A.SigningKey, root1: bytes) -> Callable[..., None]:
    """`serve_keys(version, publishers, revoked=..., signers=...)`: the server relays root1 and a keys
    document naming `publishers`, signed by the root's key unless `signers` says otherwise."""

    def serve(
        version: int,
        publishers: list[A.SigningKey],
        *,
        revoked: Sequence[A.SigningKey] = (),
        signers: list[A.SigningKey] | None = None,
    ) -> None:
        server.trust = chain([root1], trust_keys(version, publishers, signers or [root_key], revoked=revoked))

    return serve


@pytest.fixture()
def on_v1(
    server: FakeServer,
    rooted: Callable[..., AgentThread],
    serve_keys: Callable[..., None],
    key: A.SigningKey,
    releases: dict[int, Release],
) -> AgentThread:
    """An agent that trusts the root only, serving v1 (signed by `key`, which the root's keys v1 names)."""
    serve_keys(1, [key])
    server.publish(releases[1])
    agent = rooted()
    agent.wait_version(1)
    return agent


def events(server: FakeServer, type_: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in server.events_of(type_) if e.get("reason") == reason]


def test_revoked_publisher_key_moves_the_device_to_its_other_slot_and_refuses_new_artifacts(
    server: FakeServer,
    rooted: Callable[..., AgentThread],
    serve_keys: Callable[..., None],
    key: A.SigningKey,
    stranger_key: A.SigningKey,
    releases: dict[int, Release],
) -> None:
    serve_keys(1, [key, stranger_key])
    v1 = make_release(1, [stranger_key])  # the slot to fall back to
    server.publish(v1)
    agent = rooted()
    agent.wait_version(1)
    server.publish(releases[2])  # signed by `key` only
    agent.wait_version(2)

    serve_keys(2, [stranger_key], revoked=[key])
    agent.wait_version(1)
    rolled = wait_until(lambda: events(server, "rolled_back", "revoked_key"), what="rolled_back event")
    assert rolled[0]["version"] == 1 and rolled[0]["from_version"] == 2 and key.keyid in rolled[0]["detail"]

    server.publish(releases[3])  # a new artifact by the revoked key: refused, reported
    refused = wait_until(lambda: [e for e in server.events_of("failed", 3)], what="v3 refused")
    assert refused[0]["reason"] == "revoked_key" and key.keyid in refused[0]["detail"]
    assert agent.version == 1
    saved = json.loads((agent.agent.config.model_dir / "trust.json").read_text())
    assert saved["tag"] == "r1-k2"
    agent.stop()

    again = rooted()  # the persisted trust is read back: the revoked slot is never booted
    assert again.version == 1 and again.agent.status()["storage"]["files_reset"] == []
    assert again.agent.status()["trust"]["tag"] == "r1-k2"


def test_installed_version_by_a_revoked_key_without_fallback_stops_being_served(
    server: FakeServer,
    rooted: Callable[..., AgentThread],
    serve_keys: Callable[..., None],
    on_v1: AgentThread,
    key: A.SigningKey,
    stranger_key: A.SigningKey,
) -> None:
    agent = on_v1
    server.target = None  # nothing more offered
    serve_keys(2, [stranger_key], revoked=[key])
    wait_until(lambda: agent.version is None, what="the revoked model to stop being served")
    rolled = wait_until(lambda: events(server, "rolled_back", "revoked_key"), what="rolled_back event")
    assert rolled[0]["version"] is None
    agent.stop()
    assert rooted().version is None  # after a restart too


def test_a_chain_the_root_did_not_sign_is_refused_and_reported(
    server: FakeServer,
    serve_keys: Callable[..., None],
    on_v1: AgentThread,
    root_key: A.SigningKey,
    root1: bytes,
    stranger_key: A.SigningKey,
    releases: dict[int, Release],
) -> None:
    """A compromised server promotes its own key (keys signed by a non-root key), then skips a root."""
    agent = on_v1
    serve_keys(2, [stranger_key], signers=[stranger_key])
    refused = wait_until(lambda: events(server, "failed", "trust_refused"), what="trust refused")
    assert "TrustSignatureError" in refused[0]["detail"]
    rogue = A.generate_key()
    server.trust = chain([root1, trust_root(3, [rogue], [root_key, rogue])], None)
    server.trust["tag"] = "r3-k0"
    wait_until(lambda: len(events(server, "failed", "trust_refused")) == 2, what="second refusal")
    assert "TrustSkippedVersionError" in events(server, "failed", "trust_refused")[1]["detail"]
    server.publish(make_release(2, [stranger_key]))  # the rogue key's artifact is not installed
    wait_until(lambda: server.events_of("failed", 2), what="v2 refused")
    server.publish(releases[3])
    agent.wait_version(3)  # the publisher key the root named still works


def test_corrupt_trust_file_falls_back_to_the_given_root(
    server: FakeServer,
    rooted: Callable[..., AgentThread],
    serve_keys: Callable[..., None],
    make_config: Callable[..., Any],
    key: A.SigningKey,
    releases: dict[int, Release],
) -> None:
    model_dir = make_config().model_dir
    model_dir.mkdir(parents=True)
    (model_dir / "trust.json").write_text('{"accepted_at": "2026-01-01T00:00:00Z", "chain": {"roots": 7}}')
    serve_keys(1, [key])
    server.publish(releases[1])
    agent = rooted()
    assert any(r.startswith("trust.json") for r in agent.agent.status()["storage"]["files_reset"])
    agent.wait_version(1)  # the chain is fetched again from the root given
    assert json.loads((model_dir / "trust.json").read_text())["tag"] == "r1-k1"


def test_legacy_trust_keys_keep_working_without_a_root(
    server: FakeServer, run_agent: Callable[..., AgentThread], releases: dict[int, Release]
) -> None:
    server.trust = {"tag": "r9-k9", "roots": [], "keys": None}  # a chain is served, but this device has no root
    server.publish(releases[1])
    agent = run_agent()
    agent.wait_version(1)
    assert server.requests_to("/v1/trust") == 0


@pytest.mark.parametrize(
    "body",
    [b" " * (3 << 20), b"[" * 100_000, b'{"roots": 5, "keys": null}'],
    ids=["above-the-cap", "deeply-nested", "not-a-chain"],
)
def test_hostile_trust_answer_is_dropped_and_the_device_keeps_serving(
    body: bytes, server: FakeServer, on_v1: AgentThread, releases: dict[int, Release]
) -> None:
    agent = on_v1
    server.answer_hook = lambda m, p: (200, {"Content-Type": "application/json"}, [body]) if p == "/v1/trust" else None
    server.trust = {**server.trust, "tag": "r1-k2"}
    fetches = server.requests_to("/v1/trust")
    wait_until(lambda: server.requests_to("/v1/trust") >= fetches + 1, what="the agent to fetch the hostile chain")
    assert agent.agent.predict(png_bytes(16))["version"] == 1 and agent.error is None
    assert agent.agent.status()["trust"]["tag"] == "r1-k1"
    server.answer_hook = None
    server.publish(releases[2])
    agent.wait_version(2)


def test_offer_before_any_keys_document_waits_instead_of_being_condemned(
    server: FakeServer,
    rooted: Callable[..., AgentThread],
    serve_keys: Callable[..., None],
    root1: bytes,
    key: A.SigningKey,
    releases: dict[int, Release],
) -> None:
    server.trust = chain([root1], None)
    server.publish(releases[1])
    agent = rooted()
    pending = wait_until(lambda: events(server, "failed", "no_trusted_keys"), what="no_trusted_keys reported")
    assert pending[0]["version"] == 1 and agent.version is None
    serve_keys(1, [key])
    agent.wait_version(1)  # the same version, once the root named its signer
    assert len(events(server, "failed", "no_trusted_keys")) == 1


def test_version_refused_for_an_unknown_signer_is_judged_again_once_the_root_names_it(
    server: FakeServer,
    serve_keys: Callable[..., None],
    on_v1: AgentThread,
    key: A.SigningKey,
    stranger_key: A.SigningKey,
) -> None:
    """Two server processes a moment apart: the offer by the new key arrives before the new chain tag."""
    agent = on_v1
    server.publish(make_release(2, [stranger_key]))
    refused = wait_until(lambda: server.events_of("failed", 2), what="v2 refused")
    assert refused[0]["reason"] == "unknown_key"
    serve_keys(2, [key, stranger_key])
    agent.wait_version(2)
