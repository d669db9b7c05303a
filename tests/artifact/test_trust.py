"""The root of trust (artifact.trust): each test is named after the attack it defends against."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import artifact as A
from tests.support import trust_keys, trust_root

NOW = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def keys() -> dict[str, A.SigningKey]:
    return {name: A.generate_key() for name in ("root1", "root2", "root3", "pub1", "pub2")}


def chain(roots: list[bytes], keys: bytes | None = None) -> A.TrustChain:
    return A.TrustChain.from_json(
        {"roots": [json.loads(r) for r in roots], "keys": None if keys is None else json.loads(keys)}
    )


@pytest.fixture()
def start(keys: dict[str, A.SigningKey]) -> Callable[[], A.TrustState]:
    """A device that trusts root v1 (root1) and accepted keys v1 (pub1)."""

    def make() -> A.TrustState:
        r1 = trust_root(1, [keys["root1"]], [keys["root1"]])
        state = A.TrustState.from_root(r1)
        return state.update(chain([r1], trust_keys(1, [keys["pub1"]], [keys["root1"]])), now=NOW)

    return make


def test_keys_document_yields_the_publisher_policy(
    start: Callable[[], A.TrustState], keys: dict[str, A.SigningKey]
) -> None:
    state = start()
    policy = state.policy()
    assert policy is not None and set(policy.keys) == {keys["pub1"].keyid}
    assert state.tag == "r1-k1"
    assert A.TrustState.from_root(trust_root(1, [keys["root1"]], [keys["root1"]])).policy() is None


def test_revoked_publisher_key_cannot_sign_artifacts(
    start: Callable[[], A.TrustState], keys: dict[str, A.SigningKey], make_artifact: Callable[..., bytes]
) -> None:
    pub1, pub2 = keys["pub1"], keys["pub2"]
    state = start().update(chain([], trust_keys(2, [pub2], [keys["root1"]], revoked=[pub1])), now=NOW)
    policy = state.policy()
    assert policy is not None
    with pytest.raises(A.RevokedKeyError, match=pub1.keyid):
        A.verify_artifact(make_artifact(keys=[pub1]), trust=policy, expected_model=None)
    accepted = A.verify_artifact(make_artifact(keys=[pub2]), trust=policy, expected_model=None)
    assert accepted.verified.signed_by == (pub2.keyid,)


def test_keys_document_not_signed_by_the_root_is_refused(
    start: Callable[[], A.TrustState], keys: dict[str, A.SigningKey]
) -> None:
    state = start()
    forged = trust_keys(2, [keys["pub2"]], [keys["pub1"]])  # a publisher signing its own promotion
    with pytest.raises(A.TrustSignatureError, match="not signed by the threshold of root v1"):
        state.update(chain([], forged), now=NOW)
    assert state.policy() is not None and keys["pub1"].keyid in state.policy().keys  # type: ignore[union-attr]


def test_keys_document_replayed_from_before_is_refused(
    start: Callable[[], A.TrustState], keys: dict[str, A.SigningKey]
) -> None:
    old = trust_keys(1, [keys["pub1"]], [keys["root1"]])
    state = start().update(chain([], trust_keys(2, [keys["pub2"]], [keys["root1"]], revoked=[keys["pub1"]])), now=NOW)
    with pytest.raises(A.TrustRollbackError, match="older than the trusted keys v2"):
        state.update(chain([], old), now=NOW)


def test_keys_document_forked_at_the_same_version_is_refused(
    start: Callable[[], A.TrustState], keys: dict[str, A.SigningKey]
) -> None:
    other = trust_keys(1, [keys["pub2"]], [keys["root1"]])
    with pytest.raises(A.TrustRollbackError, match="same version"):
        start().update(chain([], other), now=NOW)


def test_expired_keys_document_is_refused(start: Callable[[], A.TrustState], keys: dict[str, A.SigningKey]) -> None:
    stale = trust_keys(2, [keys["pub2"]], [keys["root1"]], expires=NOW - timedelta(seconds=1))
    with pytest.raises(A.TrustExpiredError, match="keys v2 expired"):
        start().update(chain([], stale), now=NOW)


def test_root_rotation_needs_old_and_new_thresholds(
    start: Callable[[], A.TrustState], keys: dict[str, A.SigningKey]
) -> None:
    r1 = trust_root(1, [keys["root1"]], [keys["root1"]])
    r2 = trust_root(2, [keys["root2"]], [keys["root1"], keys["root2"]])
    k2 = trust_keys(2, [keys["pub2"]], [keys["root2"]])
    state = start().update(chain([r1, r2], k2), now=NOW)
    assert state.tag == "r2-k2"
    # the old root key alone no longer signs keys documents
    with pytest.raises(A.TrustSignatureError):
        state.update(chain([r2], trust_keys(3, [keys["pub1"]], [keys["root1"]])), now=NOW)
    only_new = trust_root(2, [keys["root2"]], [keys["root2"]])  # a thief of root2 cannot rotate without root1
    with pytest.raises(A.TrustSignatureError, match="threshold of root v1"):
        start().update(chain([only_new]), now=NOW)
    only_old = trust_root(2, [keys["root2"]], [keys["root1"]])
    with pytest.raises(A.TrustSignatureError, match="its own root keys"):
        start().update(chain([only_old]), now=NOW)


def test_root_chain_with_a_skipped_version_is_refused(
    start: Callable[[], A.TrustState], keys: dict[str, A.SigningKey]
) -> None:
    r1, r2, r3 = keys["root1"], keys["root2"], keys["root3"]
    skip = trust_root(3, [r3], [r1, r3])  # signed by root v1's keys: still not accepted without v2
    with pytest.raises(A.TrustSkippedVersionError, match="v2 is missing"):
        start().update(chain([trust_root(1, [r1], [r1]), skip]), now=NOW)
    full = [trust_root(1, [r1], [r1]), trust_root(2, [r2], [r1, r2]), trust_root(3, [r3], [r2, r3])]
    assert start().update(chain(full), now=NOW).root.version == 3


def test_root_rollback_and_fork_are_refused(start: Callable[[], A.TrustState], keys: dict[str, A.SigningKey]) -> None:
    r1, r2 = keys["root1"], keys["root2"]
    state = start().update(chain([trust_root(1, [r1], [r1]), trust_root(2, [r2], [r1, r2])]), now=NOW)
    with pytest.raises(A.TrustRollbackError, match="below the trusted root v2"):
        state.update(chain([trust_root(1, [r1], [r1])]), now=NOW)
    fork = trust_root(2, [r1, r2], [r1, r2])  # another v2
    with pytest.raises(A.TrustRollbackError, match="differs"):
        state.update(chain([fork]), now=NOW)


def test_expired_new_root_is_refused(start: Callable[[], A.TrustState], keys: dict[str, A.SigningKey]) -> None:
    r1, r2 = keys["root1"], keys["root2"]
    stale = trust_root(2, [r2], [r1, r2], expires=NOW - timedelta(days=1))
    with pytest.raises(A.TrustExpiredError, match="root v2 expired"):
        start().update(chain([stale]), now=NOW)


def test_root_threshold_of_two_needs_two_signatures(keys: dict[str, A.SigningKey]) -> None:
    r1, r2, r3 = keys["root1"], keys["root2"], keys["root3"]
    v1 = trust_root(1, [r1, r2, r3], [r1, r2], threshold=2)
    state = A.TrustState.from_root(v1)
    with pytest.raises(A.TrustSignatureError, match="1 valid signature"):
        state.update(chain([], trust_keys(1, [keys["pub1"]], [r1])), now=NOW)
    assert state.update(chain([], trust_keys(1, [keys["pub1"]], [r2, r3])), now=NOW).tag == "r1-k1"
    with pytest.raises(A.TrustSignatureError):
        A.TrustState.from_root(trust_root(1, [r1, r2], [r1], threshold=2))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(signed=[]), "expected a root document"),
        (lambda d: d["signed"].update(type="keys"), "expected a root document"),
        (lambda d: d["signed"].update(extra=1), "Extra inputs"),
        (lambda d: d["signed"].update(threshold=5), "threshold 5 exceeds"),
        (lambda d: d["signed"].update(version=True), "version"),
        (lambda d: d["signed"].update(expires="tomorrow"), "RFC 3339"),
        (lambda d: d.update(signatures=[{"keyid": 1}] * 100), "signatures must be a list of at most"),
        (
            lambda d: d["signed"]["keys"].update({"0" * 64: d["signed"]["keys"][next(iter(d["signed"]["keys"]))]}),
            "not its sha256",
        ),
        (lambda d: d.update(more=1), "must be an object"),
    ],
)
def test_malformed_root_is_refused_with_a_reason(
    keys: dict[str, A.SigningKey], mutate: Callable[[dict[str, Any]], None], message: str
) -> None:
    doc = json.loads(trust_root(1, [keys["root1"]], [keys["root1"]]))
    mutate(doc)
    with pytest.raises(A.TrustFormatError, match=message):
        A.TrustState.from_root(json.dumps(doc).encode())


def test_oversized_and_garbled_documents_are_refused(keys: dict[str, A.SigningKey]) -> None:
    with pytest.raises(A.TrustFormatError, match="limit"):
        A.parse_document(b" " * (A.MAX_TRUST_DOCUMENT_BYTES + 1), "root")
    with pytest.raises(A.TrustFormatError, match="not UTF-8 JSON"):
        A.parse_document(b"\xff{", "keys")
    with pytest.raises(A.TrustFormatError, match="at most"):
        A.TrustChain.from_json({"roots": [{}] * (A.MAX_CHAIN_ROOTS + 1), "keys": None})
    with pytest.raises(A.TrustFormatError, match="both trusted and revoked"):
        trust_keys(1, [keys["pub1"]], [keys["root1"]], revoked=[keys["pub1"]])


def test_a_tampered_document_does_not_verify(start: Callable[[], A.TrustState], keys: dict[str, A.SigningKey]) -> None:
    doc = json.loads(trust_keys(2, [keys["pub2"]], [keys["root1"]]))
    doc["signed"]["threshold"] = 1
    doc["signed"]["keys"].update(json.loads(trust_keys(2, [keys["pub1"]], [keys["root1"]]))["signed"]["keys"])
    with pytest.raises(A.TrustSignatureError, match="altered"):
        start().update(A.TrustChain((), doc), now=NOW)


def test_a_chain_nested_deeper_than_the_encoder_goes_is_a_format_error(
    start: Callable[[], A.TrustState], keys: dict[str, A.SigningKey]
) -> None:
    """JSON that the parser took just under its depth limit is re-encoded deeper in the stack (to
    check signatures over canonical bytes): an agent reading such a chain, or its own trust.json,
    got a RecursionError, not a refusal. Built here in Python, past any recursion limit."""
    doc = json.loads(trust_keys(2, [keys["pub2"]], [keys["root1"]]))
    deep: dict[str, Any] = {}
    for _ in range(2 * sys.getrecursionlimit()):
        deep = {"a": deep}
    doc["signed"]["revoked"] = [deep]
    with pytest.raises(A.TrustFormatError, match="nested too deeply"):
        start().update(A.TrustChain((), doc), now=NOW)
    with pytest.raises(A.TrustFormatError, match="nested too deeply"):
        start().update(
            A.TrustChain.from_json({"roots": [{"signed": {"type": "root", "x": deep}, "signatures": []}]}), now=NOW
        )
