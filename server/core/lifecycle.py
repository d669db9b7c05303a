"""The storage GC's policy: which versions, deltas and blobs are still needed, and why. Pure: no I/O.

A version is **needed** while any of these holds, and then nothing of it is deleted:

- a device runs it (``installed_version``) or holds it in its other slot (``previous_version``);
- it is its model's baseline (what devices outside a rollout are offered), revoked or not;
- it is the target of an active rollout (running, waiting or paused: a paused one may resume);
- it is *available*: not revoked and above the baseline (or the model has none), so a rollout
  may still offer it.

A version that is needed by none of these is **collectable**: it is revoked, or superseded (below
the baseline, which only ever moves up, and no rollout may target a version at or below it). Neither
can ever be offered again, so only a device reporting it can make it needed again. A collectable
version is first *marked* (``unneeded_since``); it is collected once it has stayed collectable for
the grace period, re-judged at that moment. A delta goes with its base or its target. A blob is
deleted when no version or delta that stays names it (blobs are content-addressed: two versions
can share one), or when nothing names it at all and it is older than the grace period (the
leftover of a publish or a delta build that died before its row was written).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ..data.lifecycle import DeltaFacts, Facts, VersionFacts
from ..storage import BlobInfo


@dataclass(frozen=True)
class VersionVerdict:
    facts: VersionFacts
    needed_by: tuple[str, ...]  # empty: collectable
    why: str  # why it is collectable ("revoked", "superseded by baseline v3"), or why it stays
    due: bool  # collectable and past its grace period: collected now

    @property
    def collectable(self) -> bool:
        return not self.needed_by and self.facts.collected_at is None


@dataclass(frozen=True)
class DeltaVerdict:
    facts: DeltaFacts
    why: str


@dataclass(frozen=True)
class BlobVerdict:
    sha256: str
    size: int
    why: str


@dataclass
class Plan:
    """What a run does now. Versions already collected before are not listed again."""

    now: datetime
    grace: timedelta
    versions: list[VersionVerdict] = field(default_factory=list)  # every version not yet collected
    deltas: list[DeltaVerdict] = field(default_factory=list)  # deltas collected now
    blobs: list[BlobVerdict] = field(default_factory=list)  # blobs deleted now
    stored_blobs: int = 0
    stored_bytes: int = 0

    @property
    def collect(self) -> list[VersionVerdict]:
        return [v for v in self.versions if v.collectable and v.due]

    @property
    def pending(self) -> list[VersionVerdict]:
        """Collectable, still in their grace period."""
        return [v for v in self.versions if v.collectable and not v.due]

    @property
    def kept(self) -> list[VersionVerdict]:
        return [v for v in self.versions if v.needed_by]

    @property
    def blob_bytes(self) -> int:
        return sum(b.size for b in self.blobs)

    def due_at(self, v: VersionVerdict) -> datetime:
        return (v.facts.unneeded_since or self.now) + self.grace


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def judge_version(v: VersionFacts, facts: Facts) -> tuple[tuple[str, ...], str]:
    """(what needs it, why it is collectable)."""
    needs = []
    if n := facts.installed.get((v.model, v.version), 0):
        needs.append(f"installed on {_plural(n, 'device')}")
    if n := facts.previous.get((v.model, v.version), 0):
        needs.append(f"previous slot of {_plural(n, 'device')}")
    baseline = facts.baselines.get(v.model_id)
    if baseline == v.version:
        needs.append("baseline")
    rollout = facts.rollouts.get(v.model_id)
    if rollout is not None and rollout[1] == v.version:
        needs.append(f"target of active rollout #{rollout[0]}")
    if v.revoked_at is None and (baseline is None or v.version > baseline) and baseline != v.version:
        needs.append("available: not revoked and above the baseline" if baseline else "available: no baseline yet")
    if v.revoked_at is not None:
        why = f"revoked {v.revoked_at:%Y-%m-%d}"
    elif baseline is not None and v.version < baseline:
        why = f"superseded by baseline v{baseline}"
    else:
        why = "unused"
    return tuple(needs), why


def plan_collection(
    facts: Facts, listing: Iterable[BlobInfo], *, now: datetime, grace: timedelta, orphan_age: timedelta
) -> Plan:
    """Judge every version, delta and stored blob (`listing`, taken before the facts were read).

    A blob no row names is deleted only once older than `orphan_age` (and the grace period): a
    publish or a delta build in flight writes its blob before its row."""
    plan = Plan(now=now, grace=grace)
    gone: set[tuple[int, int]] = set()  # (model id, version) collected before or now
    for v in facts.versions:
        if v.collected_at is not None:
            gone.add((v.model_id, v.version))
            continue
        needs, why = judge_version(v, facts)
        due = not needs and (v.unneeded_since or now) <= now - grace
        plan.versions.append(VersionVerdict(v, needs, why if not needs else "; ".join(needs), due))
        if due:
            gone.add((v.model_id, v.version))
    by_key = {(v.model_id, v.version): v for v in facts.versions}
    for d in facts.deltas:
        if d.collected_at is not None:
            continue
        if (d.model_id, d.from_version) in gone:
            plan.deltas.append(DeltaVerdict(d, f"its base v{d.from_version} is collected"))
        elif (d.model_id, d.to_version) in gone:
            plan.deltas.append(DeltaVerdict(d, f"its target v{d.to_version} is collected"))

    collected_deltas = {d.facts.id for d in plan.deltas}
    keep: set[str] = set()
    dead: dict[str, str] = {}
    for v in facts.versions:
        key = (v.model_id, v.version)
        if key in gone:
            dead.setdefault(v.payload_sha256, f"payload of {v.model} v{v.version}")
            dead.setdefault(v.onnx_sha256, f"ONNX model of {v.model} v{v.version}")
        else:
            keep.update((v.payload_sha256, v.onnx_sha256))
    for d in facts.deltas:
        if d.sha256 is None:
            continue
        model = by_key[(d.model_id, d.to_version)].model if (d.model_id, d.to_version) in by_key else "?"
        if d.collected_at is not None or d.id in collected_deltas:
            dead.setdefault(d.sha256, f"delta {d.from_version}→{d.to_version} of {model}")
        else:
            keep.add(d.sha256)
    named = keep | dead.keys()
    for blob in listing:
        plan.stored_blobs += 1
        plan.stored_bytes += blob.size
        if blob.sha256 in keep:
            continue
        if blob.sha256 in dead:
            plan.blobs.append(BlobVerdict(blob.sha256, blob.size, dead[blob.sha256]))
        elif blob.sha256 not in named and blob.modified <= now - max(grace, orphan_age):
            plan.blobs.append(BlobVerdict(blob.sha256, blob.size, "orphan: no version or delta names it"))
    plan.blobs.sort(key=lambda b: (b.why, b.sha256))
    return plan
