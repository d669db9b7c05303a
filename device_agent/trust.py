"""The device's root of trust: which publisher keys it trusts now, and how that changes without touching it.

A device started with ``--root root.json`` trusts a root key set; its publisher keys come from the
keys document the root signed (:mod:`artifact.trust`). Every poll answer names the server's chain
tag (``Ota-Trust-Version``); when it differs from the last one seen, :func:`refresh_trust` fetches
``GET /v1/trust``, verifies it with :meth:`artifact.TrustState.update` (the server is untrusted),
persists the accepted state atomically in DIR/trust.json, and re-checks what the device serves:
a model whose only signatures are by keys the new document revoked is replaced by the other slot
when that one still passes the door, or no longer served, and a ``rolled_back`` event says so.

DIR/trust.json is read back at start as untrusted input: it is verified again from the root given
on the command line; a file that does not verify is set aside (shown in /status) and the device
starts from that root. A device started with ``--trust KEY.pub`` only (legacy) has no root: its
publisher keys never change.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import artifact as A

from .boot import boot
from .errors import SlotError, TrustPendingError
from .fsutil import Disk, read_json
from .slots import SLOTS

if TYPE_CHECKING:
    from .device import Device

log = logging.getLogger(__name__)
MAX_TRUST_FILE_BYTES = 2 * 1024 * 1024


@dataclass
class TrustKeeper:
    """The current trust state of one device, and its file."""

    path: Path
    root: A.TrustState | None  # from --root; None: legacy --trust keys only
    fallback: A.TrustPolicy | None  # --trust keys: used until a keys document is accepted
    disk: Disk
    durable: bool = True
    state: A.TrustState | None = None
    seen_tag: str | None = None  # the server's tag last processed (accepted, or refused and reported)

    def __post_init__(self) -> None:
        self.state = self.root

    @property
    def rooted(self) -> bool:
        return self.root is not None

    def policy(self) -> A.TrustPolicy:
        """The publisher policy artifacts are checked with now; :class:`TrustPendingError` (transient:
        nothing is judged) before a root-only device has accepted a keys document."""
        policy = self.state.policy() if self.state is not None else None
        if policy is not None:
            return policy
        if self.fallback is not None:
            return self.fallback
        raise TrustPendingError("no publisher key is trusted yet: the server has served no keys document")

    @property
    def ready(self) -> bool:
        return self.fallback is not None or (self.state is not None and self.state.keys is not None)

    def describe(self) -> dict[str, Any]:
        """For /status: where the publisher keys come from, and which ones."""
        state = self.state
        keys = sorted(self.policy().keys) if self.ready else []
        if state is None:
            return {"source": "--trust", "publisher_keys": keys}
        return {"source": "root", "tag": state.tag, "server_tag": self.seen_tag, "publisher_keys": keys}

    def load(self) -> str | None:
        """Read DIR/trust.json back; returns why it was unusable (it is then ignored), or None."""
        if self.root is None:
            return None
        try:
            if not self.path.exists():
                return None
            if self.path.stat().st_size > MAX_TRUST_FILE_BYTES:
                raise ValueError(f"larger than {MAX_TRUST_FILE_BYTES} bytes")
            value = read_json(self.path)
            if not isinstance(value, dict) or not isinstance(value.get("accepted_at"), str):
                raise ValueError("not a saved trust state")
            accepted_at = A.parse_time(value["accepted_at"])
            # Documents are judged as of when they were accepted: one that expired since stays in force
            # until a newer one arrives (a device offline for a while must not stop serving).
            self.state = self.root.update(A.TrustChain.from_json(value.get("chain")), now=accepted_at)
        except (OSError, ValueError, A.TrustError) as e:
            self.state = self.root
            return f"{type(e).__name__}: {e}"
        return None

    def accept(self, chain: Any, *, tag: str | None, now: datetime) -> bool:
        """Verify the served chain; persist and return True when it changed the state.

        :class:`artifact.TrustError` (the chain is refused) leaves the state and the file as they were.
        """
        assert self.state is not None
        new = self.state.update(A.TrustChain.from_json(chain), now=now)
        self.seen_tag = tag
        if new == self.state:
            return False
        saved = {"accepted_at": A.format_time(now), "tag": tag, "chain": new.chain().to_json()}
        try:
            self.disk.write_json(self.path, saved, mode=0o644, durable=self.durable)  # before it is acted on
        except OSError as e:  # a full or read-only disk: trusted in memory, fetched again after a restart
            log.error("trust state not saved: %s", e)
        self.state = new
        return True


async def refresh_trust(dev: Device) -> bool:
    """Fetch and verify the server's chain when its tag changed; True when the trust changed.

    Transient errors propagate (the poll backs off); a refused chain is reported once per tag and
    the device keeps its trust."""
    keeper = dev.trust_keeper
    tag = dev.client.trust_version
    if not keeper.rooted or tag is None or tag == keeper.seen_tag:
        return False
    chain = await dev.client.trust_chain()
    try:
        changed = keeper.accept(chain, tag=tag, now=datetime.now(UTC))
    except A.TrustError as e:
        keeper.seen_tag = tag
        log.error("trust chain %s refused: %s", tag, e)
        dev.emit("failed", None, reason="trust_refused", detail=f"{type(e).__name__}: {e}")
        return False
    if changed:
        state = keeper.state
        assert state is not None
        log.info("trust updated to %s", state.tag)
        _forgive_unknown_signers(dev)
        await recheck_served(dev)
    return changed


# Refusals that new publisher keys can undo: a version signed by a key the device did not trust yet
# (a server process that offered it a moment before its chain tag changed) is judged again.
SIGNER_REASONS = frozenset({"unknown_key", "threshold"})


def _forgive_unknown_signers(dev: Device) -> None:
    rec = dev.record
    forgiven = [v for v, reason in rec.failed.items() if reason in SIGNER_REASONS]
    if forgiven:
        for version in forgiven:
            del rec.failed[version]
        rec.etag, rec.etag_version = None, None
        dev.save()
        log.info("versions %s will be judged again under the new publisher keys", forgiven)


async def recheck_served(dev: Device) -> None:
    """After a trust change: keep serving the active model only if its slot still passes the door."""
    slot, served = dev.slots.active(), dev.holder.version
    if served is None:  # nothing served (no keys were trusted at start?): boot with the new trust
        if any(dev.slots.version(s) is not None for s in SLOTS):
            await boot(dev)
        return
    if slot is None:
        return
    try:
        await asyncio.to_thread(dev.slots.load, slot, trust=dev.trust, model=dev.config.model)
        return
    except SlotError as e:  # unreadable now; what is in memory was verified: boot judges it at the next start
        log.warning("slot %s cannot be re-checked: %s", slot, e)
        return
    except A.ArtifactError as e:
        log.warning("v%s is no longer trusted: %s", served, e)
    await boot(dev)  # refuses the active slot again, serves the other one if it passes; reported either way
    if dev.slots.active() == slot:
        dev.holder.clear()
        log.error("no slot passes the new trust: v%s is no longer served", served)
