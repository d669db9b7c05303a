"""The update state machine (STYLE.md 5; mender's app/state.go).

::

    idle ─▶ checking ─▶ downloading ─▶ verifying ─▶ staging ─▶ validating ─▶ swapping ─▶ reporting ─▶ idle
               │  no offer / known-bad version ─▶ idle
               └─ any failure ─▶ handle_error: transient ─▶ backoff ─▶ checking (fresh URLs, resume)
                                              fatal     ─▶ `failed` event, old model kept ─▶ idle
                                              fatal in a delta ─▶ downloading the full payload, once

One small function per state does its work and returns the next state with the
:class:`~device_agent.install.Install` it hands on (None once the install ended); none catches
anything. The runner persists the state before each step and sends every exception to
:func:`handle_error`, the single place that applies :func:`device_agent.policy.classify`. A retry
polls again and goes on where the install stands (:func:`_go_on`): bytes verified and a model
validated in this process are not verified again, so a failing slot write is retried alone. On start,
:func:`resume` picks the state to continue from and counts the crash; past the cap the version
fails with `crash_loop`. The persisted record decides whether an install is in flight: a step that
accepted an offer and then raised never returned its install, so the runner takes it from there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime

import artifact as A

from .device import Device
from .enroll import reenroll, renew_token
from .errors import AuthError, CrashLoopError, OfferError, SlotError, TransientError
from .install import Install
from .policy import classify
from .protocol import Offer, now_rfc3339
from .state import Job, State
from .trust import refresh_trust

log = logging.getLogger(__name__)
Next = tuple[State, Install | None]  # the next state, and the install it works on
Step = Callable[[Device, Install | None], Awaitable[Next]]


def _need(dev: Device, install: Install | None) -> Install:
    if install is None:
        raise RuntimeError(f"state {dev.state} needs an update in progress")
    return install


def _held(dev: Device, install: Install | None) -> Install | None:
    """The install for the job the persisted record names: the one in hand, or a new one for it."""
    job = dev.record.job
    if job is None:
        return None
    return install if install is not None and install.job is job else Install(job)


def verify_offer(dev: Device, offer: Offer) -> A.VerifiedManifest:
    """Door checks 1–5 on the offered manifest, against the version being served now."""
    verified = A.verify_manifest(
        offer.manifest_bytes,
        offer.signatures,
        trust=dev.trust,
        expected_model=dev.config.model,
        installed_version=dev.holder.version,
    )
    m = verified.manifest
    if (offer.model, offer.version) != (m.model, m.version):
        raise OfferError(f"offer names {offer.model} v{offer.version}, its signed manifest {m.model} v{m.version}")
    return verified


def _verified(dev: Device, install: Install) -> tuple[A.VerifiedManifest, Install]:
    """The install's manifest through door checks 1–5: verified once when the offer is accepted, and
    once more only when the record was rebuilt from disk (after a restart nothing in memory is trusted)."""
    v = install.verified
    if v is not None and v.manifest_bytes == install.job.offer.manifest_bytes:
        return v, install
    v = verify_offer(dev, install.job.offer)
    return v, replace(install, verified=v)


def _choose_source(dev: Device, offer: Offer, verified: A.VerifiedManifest) -> str:
    """The delta when it applies to what we serve and is smaller than the signed payload; else the payload.

    A delta is unsigned, so its offered length is the only bound on the transfer: comparing it with
    the *signed* payload length keeps a hostile offer from making the device fetch more than that.
    """
    d = offer.delta
    usable = d is not None and d.from_version == dev.holder.version and d.length < verified.manifest.payload.length
    return "delta" if usable and dev.slots.active() is not None else "full"


def _finish_job(dev: Device, install: Install, *, refused: bool) -> None:
    """End the job; its in-memory data ends with `install`, which no state receives again.

    A refused offer's ETag is kept, so that the server may answer 304 while it stands.
    """
    job = install.job
    dev.record.etag, dev.record.etag_version = (job.offer.etag, job.from_version) if refused else (None, None)
    dev.record.job = None
    dev.record.crashes = {}
    dev.downloads.clear()
    dev.backoff.reset()
    dev.delta_misses = 0
    dev.save()


def _blob(job: Job, verified: A.VerifiedManifest) -> tuple[str, int, str, str]:
    """(url, length, sha256, what) of the bytes to fetch: the signed payload, or the offered delta."""
    if job.source == "delta" and job.offer.delta is not None:
        d = job.offer.delta
        return d.url, d.length, d.sha256, f"delta from v{d.from_version}"  # unsigned: bounded by the offer
    p = verified.manifest.payload
    return job.offer.download.url, p.length, p.sha256, "payload"


def _mark(install: Install, name: str) -> None:
    """Milliseconds since the ONNX bytes passed the door: where an install spends its time."""
    if install.verified_at is not None:
        install.job.timings[name] = (time.perf_counter() - install.verified_at) * 1000


async def idle(dev: Device, install: Install | None) -> Next:
    await dev.sleep(dev.poll_delay())
    return State.CHECKING, install


async def checking(dev: Device, install: Install | None) -> Next:
    await renew_token(dev)  # halfway through its lifetime: before the poll, so the poll uses the new one
    rec = dev.record
    current = dev.holder.version
    offer = await dev.client.poll(current, rec.etag if install is None and rec.etag_version == current else None)
    if install is None:  # a poll that works says nothing of a download that keeps failing: that backs off on its own
        dev.backoff.reset()
    if offer is not None and offer.poll_interval:
        rec.poll_interval = offer.poll_interval
    if await refresh_trust(dev) and install is not None:  # judged before any offer: it may revoke a signer
        # The install in flight is verified (and validated) again under the new keys.
        install = replace(install, verified=None, staged=None, candidate=None, slot_write=None)
    if dev.read_only:  # nothing can be written: serve what is installed, say once per version why not more
        rec.job = None
        if offer is not None and offer.version != current:
            _report_once(dev, offer.version, "read_only", "the model directory is read-only: updates are impossible")
        return State.IDLE, None
    if install is not None:
        job = install.job
        if offer is not None and offer.version == job.version and offer.manifest_bytes == job.offer.manifest_bytes:
            job.offer = offer  # fresh URLs (presigned ones expire); what is on disk still counts
            return _go_on(install)
        log.info("the server no longer offers v%d; dropping it", job.version)
        _finish_job(dev, install, refused=False)
    if offer is None:
        return State.IDLE, None
    if not dev.trust_keeper.ready:  # no keys document yet: the offer cannot be judged, and is not condemned
        _report_once(dev, offer.version, "no_trusted_keys", "the server has served no keys document yet")
        return State.IDLE, None
    if offer.version in rec.failed or offer.version == dev.holder.version:
        rec.etag, rec.etag_version = offer.etag, current  # judged already: let the server answer 304 from now on
        return State.IDLE, None
    install = Install(Job(offer, from_version=dev.holder.version))  # the offer is accepted: an install begins
    rec.job = job = install.job
    dev.emit("checking", offer.version)
    verified, install = _verified(dev, install)  # door checks 1–5 before a byte is downloaded
    job.source = _choose_source(dev, offer, verified)
    return State.DOWNLOADING, install


def _go_on(install: Install) -> Next:
    """Where a retry of the offer in hand goes on. A model this process verified and validated is
    not verified or validated again (nor announced `verified` again): a failing slot write or swap is
    retried with the same bytes, and backs off as that step keeps failing."""
    if install.staged is None or install.job.slot is None:
        return State.DOWNLOADING, install
    if install.candidate is None:
        return State.STAGING, install
    write = install.slot_write
    if write is not None and write.done() and (write.cancelled() or write.exception() is not None):
        write = None  # it failed: swapping writes the slot again
    return State.SWAPPING, replace(install, slot_write=write)


async def downloading(dev: Device, install: Install | None) -> Next:
    install = _need(dev, install)
    job = install.job
    verified, install = _verified(dev, install)
    url, length, sha256, what = _blob(job, verified)
    await asyncio.to_thread(dev.runtime.warm, verified)  # golden inputs: they need only the manifest
    if job.announced != job.source:
        dev.emit("downloading", job.version, source=job.source, bytes=length, reason=job.delta_refused)
        job.announced = job.source
        dev.save(sync=False)
    fetch = asyncio.ensure_future(
        dev.downloads.fetch(
            dev.client,
            url,
            length=length,
            sha256=sha256,
            what=what,
            progress=install.progress.update,
            reserve=verified.manifest.onnx.length,  # the slot it will be written to
        )
    )
    watch = asyncio.ensure_future(_offer_withdrawn(dev, job))
    try:
        await asyncio.wait([fetch, watch], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (watch, fetch):
            task.cancel()
        await asyncio.gather(watch, fetch, return_exceptions=True)
    if not fetch.done() or fetch.cancelled():  # the server changed its mind: checking acts on its new word
        log.info("the offer of v%d changed while it downloaded; polling again", job.version)
        return State.CHECKING, install
    result = fetch.result()
    job.bytes_received += result.received
    dev.bytes_by_source[job.source] += result.received
    dev.backoff.reset()  # the step that was failing has passed
    return State.VERIFYING, install


async def _offer_withdrawn(dev: Device, job: Job) -> None:
    """Poll while a download runs; return once the server no longer offers the job's version as it
    was (a newer offer, a revocation): a slow download must not hide the server's new word."""
    while True:
        await dev.sleep(dev.poll_delay())
        if dev.stopping:
            await asyncio.Event().wait()  # the machine is being cancelled; the download's end decides nothing
        try:
            offer = await dev.client.poll(dev.holder.version, None)
        except (TransientError, AuthError) as e:
            log.debug("poll while downloading: %s", e)
            continue
        if offer is None or (offer.version, offer.manifest_bytes) != (job.version, job.offer.manifest_bytes):
            return


async def verifying(dev: Device, install: Install | None) -> Next:
    """Payload → ONNX (bounded decode), or old ONNX + delta → ONNX; the result is checked against the signed hash."""
    install = _need(dev, install)
    job = install.job
    verified, install = _verified(dev, install)
    _url, length, sha256, what = _blob(job, verified)
    data = dev.downloads.read(sha256, length=length, what=what)
    if data is None:
        return State.DOWNLOADING, install
    if job.source == "delta":
        base_slot = dev.slots.active()
        if base_slot is None:
            raise OfferError("a delta needs an installed model to apply to")
        base = dev.slots.read_onnx(base_slot)
        onnx = await asyncio.to_thread(A.install_delta, verified, base, data.data)
    else:
        onnx = await asyncio.to_thread(A.install_full, verified, data)
    if dev.said_verified != job.version:  # once per install, not once per retry of a later step
        dev.emit("verified", job.version)
        dev.said_verified = job.version
    verified_wall = datetime.now(UTC)
    job.slot = dev.slots.inactive()  # persisted by the next state marker, before anything is written there
    staged = replace(install, staged=(verified, onnx), verified_wall=verified_wall, verified_at=time.perf_counter())
    return State.STAGING, staged


async def staging(dev: Device, install: Install | None) -> Next:
    install = _need(dev, install)
    job = install.job
    if install.staged is None or job.slot is None:  # restarted: the verified bytes were only in memory
        return State.VERIFYING, install
    if dev.slots.holds_validated(job.slot):
        # That slot holds the fallback, the only other good model: it is overwritten only once the
        # new one passed validation (swapping writes it), so a refused version cannot cost the rollback target.
        return State.VALIDATING, install
    verified, onnx = install.staged
    write = dev.write_slot(job.slot, verified, onnx)  # swapping waits for it; validating needs only memory
    return State.VALIDATING, replace(install, slot_write=write)


async def validating(dev: Device, install: Install | None) -> Next:
    install = _need(dev, install)
    job = install.job
    if install.staged is not None:
        verified, onnx = install.staged
    elif job.slot is None:
        return State.VERIFYING, install
    else:  # restarted: validate what is on disk, through the door again
        try:
            content = await asyncio.to_thread(
                dev.slots.load, job.slot, trust=dev.trust, model=dev.config.model, staged=True
            )
        except (SlotError, A.ArtifactError) as e:
            log.warning("staged slot %s is unusable (%s); staging again", job.slot, e)
            return State.VERIFYING, install
        if content.version != job.version:
            return State.VERIFYING, install
        verified, onnx = content.verified, content.onnx
    model, timings = await asyncio.to_thread(dev.runtime.prepare, onnx, verified)
    job.timings.update(session_ms=timings.session_ms, golden_ms=timings.golden.golden_ms)
    _mark(install, "validated_at_ms")
    # The verified bytes stay with the install until the swap: a slot write that fails is retried with them.
    return State.SWAPPING, replace(install, candidate=model)


async def swapping(dev: Device, install: Install | None) -> Next:
    install = _need(dev, install)
    job = install.job
    if job.slot is not None and dev.slots.active() == job.slot and dev.holder.version == job.version:
        return State.REPORTING, install  # restarted after the pointer moved: boot already serves it
    if install.candidate is None or job.slot is None:
        return State.VALIDATING, install
    if install.slot_write is not None:  # never point at a slot that is not on disk
        await install.slot_write
    elif install.staged is not None:  # validated before it was written (the slot held the fallback), or retried
        await dev.write_slot(job.slot, *install.staged)
    else:  # restarted since staging: make sure it is on disk
        await asyncio.to_thread(dev.slots.sync, job.slot)
    _mark(install, "synced_at_ms")
    dev.slots.mark_validated(job.slot, install.verified_wall or datetime.now(UTC))
    dev.crash_point("swapping:before-pointer")
    dev.slots.activate(job.slot, sync=False)
    dev.crash_point("swapping:after-pointer")
    dev.holder.swap(install.candidate)
    _mark(install, "verified_to_serving_ms")
    await asyncio.to_thread(dev.slots.sync_pointer)  # pointer and meta durable before `installed` is reported
    return State.REPORTING, replace(install, candidate=None, staged=None)


async def reporting(dev: Device, install: Install | None) -> Next:
    install = _need(dev, install)
    job = install.job
    timings = {k: round(v, 3) for k, v in job.timings.items()}
    record = {
        "version": job.version,
        "source": job.source,
        "bytes": job.bytes_received,
        "payload_bytes": job.offer.download.length,
        "at": now_rfc3339(),
    }
    dev.add_install({**record, **timings, "delta_refused": job.delta_refused})
    dev.emit("installed", job.version, source=job.source, bytes=job.bytes_received, from_version=job.from_version)
    log.info(
        "installed %s v%d (%s, %d bytes, verified→serving %.1f ms)",
        dev.config.model,
        job.version,
        job.source,
        job.bytes_received,
        timings.get("verified_to_serving_ms", float("nan")),
    )
    _finish_job(dev, install, refused=False)
    return State.IDLE, None


STEPS: dict[State, Step] = {
    State.IDLE: idle,
    State.CHECKING: checking,
    State.DOWNLOADING: downloading,
    State.VERIFYING: verifying,
    State.STAGING: staging,
    State.VALIDATING: validating,
    State.SWAPPING: swapping,
    State.REPORTING: reporting,
}

# Where a restart continues. Bytes that lived only in memory are recomputed from what is on disk.
RESUME: dict[State, State] = {
    State.IDLE: State.CHECKING,
    State.CHECKING: State.CHECKING,
    State.DOWNLOADING: State.DOWNLOADING,
    State.VERIFYING: State.VERIFYING,
    State.STAGING: State.VERIFYING,
    State.VALIDATING: State.VALIDATING,
    State.SWAPPING: State.SWAPPING,
    State.REPORTING: State.REPORTING,
}


# Where a crash can be the update's doing (decoding, loading, validating, swapping in the new model):
# only these count towards the cap. A device power-cycled four times while its download makes
# progress has learned nothing against the version.
CRASH_COUNTED = frozenset({State.CHECKING, State.VERIFYING, State.STAGING, State.VALIDATING, State.SWAPPING})


def resume(dev: Device) -> State:
    """The state to continue from. A start that finds a job unfinished is a crash, unless we stopped
    cleanly; it counts against the version only in :data:`CRASH_COUNTED` states."""
    rec = dev.record
    clean, rec.clean_exit = rec.clean_exit, False
    if rec.job is None or dev.read_only:  # read-only: no install can go on (checking says so)
        return State.CHECKING
    state = rec.state
    if not clean and state not in CRASH_COUNTED:
        log.warning("resuming v%d in state %s after an unclean stop (not counted)", rec.job.version, state)
    elif not clean:
        crashes = rec.crashes.get(state.value, 0) + 1
        rec.crashes[state.value] = crashes
        dev.save()
        if crashes > dev.config.max_crashes:
            raise CrashLoopError(f"the agent died {crashes} times in state {state} while installing v{rec.job.version}")
        log.warning("resuming v%d in state %s after a crash (%d so far)", rec.job.version, state, crashes)
    return RESUME[state]


DELTA_TRIES = 3  # answers other than the delta's bytes (404, 410, 5xx) before the full payload is fetched instead


def _delta_unavailable(dev: Device, install: Install, state: State, exc: Exception) -> bool:
    """True once the server has answered the delta's URL with an error :data:`DELTA_TRIES` times in a
    row: a delta that is never there must not stop the update (the full payload is signed anyway)."""
    if install.job.source != "delta" or state is not State.DOWNLOADING:
        return False
    if not isinstance(exc, TransientError) or exc.status is None:  # the network, not the server's answer
        return False
    dev.delta_misses += 1
    return dev.delta_misses >= DELTA_TRIES


async def handle_error(dev: Device, state: State, install: Install | None, exc: Exception) -> Next:
    """The one error handler: retry later, fall back from a delta once, or fail the version."""
    install = _held(dev, install)
    if isinstance(exc, AuthError) and await reenroll(dev, str(exc)):
        return State.CHECKING, install
    d = classify(exc, in_update=install is not None)
    dev.last_error = {"state": state.value, "reason": d.reason, "detail": d.detail, "at": now_rfc3339()}
    if d.reason == "internal_error":
        log.error("unexpected failure in state %s", state, exc_info=exc)
    if d.fatal and install is not None:
        job = install.job
        if job.source == "delta" and state in (State.DOWNLOADING, State.VERIFYING):
            log.warning("delta for v%d refused (%s: %s); fetching the full payload", job.version, d.reason, d.detail)
            job.source, job.delta_refused = "full", f"{d.reason}: {d.detail}"
            dev.save(sync=False)
            return State.DOWNLOADING, install
        log.error(
            "v%d refused in state %s: %s: %s; keeping v%s", job.version, state, d.reason, d.detail, dev.holder.version
        )
        dev.emit("failed", job.version, reason=d.reason, detail=d.detail, state=state.value)
        dev.record.remember_failed(job.version, d.reason)
        _finish_job(dev, install, refused=True)
        return State.IDLE, None
    if d.reason == "no_space" and install is not None:  # the download's partial file is already removed
        _report_once(dev, install.job.version, "no_space", d.detail, state=state.value)
    elif install is not None and _delta_unavailable(dev, install, state, exc):
        job = install.job
        log.warning(
            "delta for v%d unavailable %d times (%s); fetching the full payload",
            job.version,
            dev.delta_misses,
            d.detail,
        )
        job.source, job.delta_refused = "full", f"delta_unavailable: {d.detail}"
        dev.save(sync=False)
    dev.retries += 1
    delay = dev.backoff.next_delay(d.retry_after, slow=d.slow)
    log.warning("%s in state %s: %s; retrying in %.1f s", d.reason, state, d.detail, delay)
    await dev.sleep(delay)
    return State.CHECKING, install


def _report_once(dev: Device, version: int, reason: str, detail: str, **fields: str) -> None:
    """`failed` for a version this device cannot install *now* (a full disk, a read-only directory).
    The version is not condemned: once the fault clears it is installed like any other offer."""
    if (reason, version) not in dev.reported:
        dev.reported.add((reason, version))
        log.error("v%d cannot be installed: %s: %s", version, reason, detail)
        dev.emit("failed", version, reason=reason, detail=detail, **fields)


async def run_machine(dev: Device) -> None:
    """Run until the device is asked to stop. Every exception goes through `handle_error`."""
    install = _held(dev, None)  # a job found in DIR/state.json: resumed with nothing in memory
    try:
        state = resume(dev)
    except CrashLoopError as e:
        state, install = await handle_error(dev, dev.record.state, install, e)
    while not dev.stopping:
        try:
            dev.enter(state, install)
            state, install = await STEPS[state](dev, install)
        except Exception as exc:  # the loop guard: routed through the one error policy, never swallowed
            state, install = await handle_error(dev, state, install, exc)
