"""Every crafted offer is refused, reported with its reason, and the old model keeps serving (threat → test)."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import artifact as A
from device_agent.slots import SlotStore

from .conftest import AgentThread, wait_until
from .fakeserver import FakeServer
from .models import Release, golden_cases, make_release, png_bytes, tiny_classifier

Key = A.SigningKey
Craft = Callable[[FakeServer, dict[int, Release], Key, Key], None]


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def tampered_payload(server: FakeServer, r: dict[int, Release], key: Key, _: Key) -> None:
    server.deltas = False
    server.publish(r[3])
    server.blob_override[r[3].payload_sha] = _flip(r[3].payload, len(r[3].payload) // 2)


def tampered_manifest(server: FakeServer, r: dict[int, Release], key: Key, _: Key) -> None:
    def hook(offer: dict[str, Any]) -> dict[str, Any]:
        offer["manifest"]["labels"] = ["bircle", "square", "triangle"]
        return offer

    server.offer_hook = hook
    server.publish(r[3])


def bad_signature(server: FakeServer, r: dict[int, Release], key: Key, _: Key) -> None:
    def hook(offer: dict[str, Any]) -> dict[str, Any]:
        offer["signatures"] = [{"keyid": key.verify_key.keyid, "sig": base64.b64encode(os.urandom(64)).decode()}]
        return offer

    server.offer_hook = hook
    server.publish(r[3])


def unknown_key(server: FakeServer, r: dict[int, Release], key: A.SigningKey, stranger: A.SigningKey) -> None:
    server.publish(make_release(3, [stranger]))


def downgrade(server: FakeServer, r: dict[int, Release], key: Key, _: Key) -> None:
    server.forced = r[1]  # validly signed, but older than the v2 the device runs


def expired_manifest(server: FakeServer, r: dict[int, Release], key: Key, _: Key) -> None:
    past = datetime.now(UTC) - timedelta(hours=1)
    server.publish(
        make_release(3, [key], created_at=A.format_time(past - timedelta(days=1)), expires_at=A.format_time(past))
    )


def payload_longer_than_offered(server: FakeServer, r: dict[int, Release], key: Key, _: Key) -> None:
    server.deltas = False
    server.publish(r[3])
    server.blob_override[r[3].payload_sha] = r[3].payload + b"\0" * 50_000


def delta_for_wrong_base(server: FakeServer, r: dict[int, Release], key: Key, _: Key) -> None:
    """The delta is made against v1 but offered for v2; the full payload is tampered too: nothing is left."""
    server.delta_override[2] = A.make_delta(r[1].onnx, r[3].onnx)
    server.publish(r[3])
    server.blob_override[r[3].payload_sha] = _flip(r[3].payload, 10)


def golden_set_mismatch(server: FakeServer, r: dict[int, Release], key: Key, _: Key) -> None:
    cases = golden_cases(tiny_classifier(3), 8, image_case=True)
    cases[4]["logits"] = [v + 0.5 for v in cases[4]["logits"]]  # same top-1, logits off by far more than 1e-4
    server.publish(make_release(3, [key], golden={"tolerance": 1e-4, "cases": cases}))


def model_the_runtime_cannot_load(
    server: FakeServer, r: dict[int, Release], key: A.SigningKey, _: A.SigningKey
) -> None:
    golden = r[3].manifest["golden"]  # signed, hashed, well-formed: but not an ONNX model at all
    server.publish(make_release(3, [key], onnx_bytes=b"\x08\x07" + os.urandom(300), golden=golden))


def manifest_for_another_model(server: FakeServer, r: dict[int, Release], key: Key, _: Key) -> None:
    server.publish(make_release(3, [key], model="faces"))


def offer_contradicts_its_manifest(
    server: FakeServer, r: dict[int, Release], key: A.SigningKey, _: A.SigningKey
) -> None:
    def hook(offer: dict[str, Any]) -> dict[str, Any]:
        offer["version"] = 7
        return offer

    server.offer_hook = hook
    server.publish(r[3])


CASES: list[tuple[Craft, str, int]] = [
    (tampered_payload, "hash_mismatch", 3),
    (tampered_manifest, "bad_signature", 3),
    (bad_signature, "bad_signature", 3),
    (unknown_key, "unknown_key", 3),
    (downgrade, "downgrade", 1),
    (expired_manifest, "expired", 3),
    (payload_longer_than_offered, "too_long", 3),
    (delta_for_wrong_base, "hash_mismatch", 3),
    (golden_set_mismatch, "validation_failed", 3),
    (model_the_runtime_cannot_load, "validation_failed", 3),
    (manifest_for_another_model, "model_mismatch", 3),
    (offer_contradicts_its_manifest, "offer_invalid", 7),
]


@pytest.mark.parametrize(("craft", "reason", "version"), CASES, ids=[c[0].__name__ for c in CASES])
def test_crafted_offer_is_refused_and_old_model_keeps_serving(
    craft: Craft,
    reason: str,
    version: int,
    server: FakeServer,
    releases: dict[int, Release],
    key: A.SigningKey,
    stranger_key: A.SigningKey,
    run_agent: Callable[..., AgentThread],
) -> None:
    server.publish(releases[2])
    agent = run_agent()
    agent.wait_version(2)
    slots = SlotStore(agent.agent.config.model_dir / "slots")
    served_from = slots.active()

    craft(server, releases, key, stranger_key)
    failed = wait_until(lambda: server.events_of("failed"), what=f"a failed event ({reason})")
    assert [(e["version"], e["reason"]) for e in failed] == [(version, reason)]
    assert failed[0]["detail"]
    assert agent.agent.predict(png_bytes(16))["version"] == 2
    assert slots.active() == served_from
    assert agent.agent.status()["failed_versions"] == {str(version): reason}

    # The refused version is not fetched again and again while the server keeps offering it.
    blob_gets = len([r for r in server.requests if r[1].startswith("/v1/blobs/")])
    time.sleep(0.4)
    assert len(server.events_of("failed")) == 1
    assert len([r for r in server.requests if r[1].startswith("/v1/blobs/")]) == blob_gets
    assert not list((agent.agent.config.model_dir / "downloads").iterdir())


def test_delta_for_wrong_base_falls_back_to_the_full_payload_once(
    server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> None:
    server.publish(releases[2])
    agent = run_agent()
    agent.wait_version(2)
    server.delta_override[2] = A.make_delta(releases[1].onnx, releases[3].onnx)
    server.publish(releases[3])
    agent.wait_version(3)
    downloads = wait_until(lambda: len(server.events_of("downloading", 3)) == 2 and server.events_of("downloading", 3))
    assert [e["source"] for e in downloads] == ["delta", "full"]
    assert downloads[1]["reason"].startswith("delta_base_mismatch")
    assert agent.agent.status()["last_install"]["source"] == "full"
    assert not server.events_of("failed")


def test_offer_cannot_enlarge_the_signed_payload_length(
    server: FakeServer, releases: dict[int, Release], run_agent: Callable[..., AgentThread]
) -> None:
    """The offer's download.length is unsigned: the agent caps the transfer at the manifest's length."""
    server.deltas = False

    def hook(offer: dict[str, Any]) -> dict[str, Any]:
        offer["download"]["length"] = 10**9
        return offer

    server.offer_hook = hook
    server.publish(releases[1])
    server.blob_override[releases[1].payload_sha] = releases[1].payload + b"\0" * 10_000
    run_agent()
    failed = wait_until(lambda: server.events_of("failed"), what="failed event")
    assert failed[0]["reason"] == "too_long"


@pytest.mark.parametrize(
    ("craft", "state"),
    [(bad_signature, "checking"), (tampered_payload, "downloading"), (golden_set_mismatch, "validating")],
    ids=["refused-on-offer", "refused-mid-download", "refused-on-device"],
)
def test_refusal_names_the_state_it_happened_in(
    craft: Craft,
    state: str,
    server: FakeServer,
    releases: dict[int, Release],
    key: A.SigningKey,
    stranger_key: A.SigningKey,
    run_agent: Callable[..., AgentThread],
) -> None:
    """The `failed` event and the status say where the install stopped, also when it stopped in the
    very state that accepted the offer."""
    server.publish(releases[2])
    agent = run_agent()
    agent.wait_version(2)
    craft(server, releases, key, stranger_key)
    failed = wait_until(lambda: server.events_of("failed"), what=f"a failed event in state {state}")
    assert [(e["version"], e["state"]) for e in failed] == [(3, state)]
    status = agent.agent.status()
    assert status["last_error"]["state"] == state and status["target_version"] is None
