"""Deltas between published versions: built once per (model, from, to), off the request path.

When a version is published the delta from the previous offered version is queued at once
(*eager*); a delta from any older published version is queued the first time a device on that
version polls (*lazy*; a version the model never had is never queued). Each process remembers at
most ``CACHE_PAIRS`` finished pairs, least recently used first out, so no device can grow it. A
poll never waits for a build: it offers the full download until the delta is ready.

"Once" holds across processes: a build starts only after its worker has inserted the pair's row in
``deltas`` (the unique constraint is the claim, see :mod:`server.data.delta_rows`). Within a process
a pair is queued at most once at a time. Finished rows (ready, oversize, failed) never change, so
each process caches them after one read.

A delta is stored only if it is smaller than ``OTA_DELTA_MAX_RATIO`` (60 %) of the full payload;
otherwise the row records it as `oversize` and devices keep getting the full payload. Before
storing, the delta goes through the device's own install check (:func:`artifact.install_delta`):
applied to its base, it must rebuild the model the new version's manifest signs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import artifact as A

from ..data import delta_rows as delta_data
from ..data import registry as registry_data
from ..db.models import ModelVersion
from ..db.session import Database, utcnow
from ..errors import BlobNotFoundError, DatabaseUnavailableError, StorageUnavailableError
from ..observability import Metrics
from ..storage import Storage

log = logging.getLogger("ota.deltas")
Key = tuple[int, int, int]  # model_id, from_version, to_version
RETRY_PENDING = 1.0  # seconds before asking the database again about a pair another process is building
RETRY_FAILED_IO = 5.0
CACHE_PAIRS = 4096  # finished pairs remembered per process (least recently used first out)


@dataclass(frozen=True, slots=True)
class DeltaState:
    """A finished delta row. Only `ready` ones have a blob."""

    status: str
    sha256: str | None = None
    length: int | None = None


UNKNOWN_BASE = DeltaState(status="unknown-base")  # the device reports a version this model never had
COLLECTED = DeltaState(status=delta_data.COLLECTED)  # a version of the pair was collected by the storage GC


class DeltaService:
    def __init__(
        self,
        db: Database,
        storage: Storage,
        metrics: Metrics,
        *,
        max_ratio: float,
        workers: int,
        claim_timeout: float,
        cache_pairs: int = CACHE_PAIRS,
    ) -> None:
        self.db = db
        self.storage = storage
        self.metrics = metrics
        self.max_ratio = max_ratio
        self.claim_timeout = claim_timeout
        self.claimer = f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.cache_pairs = cache_pairs
        self._final: OrderedDict[Key, DeltaState] = OrderedDict()
        self._retry_at: OrderedDict[Key, float] = OrderedDict()
        self._queued: set[Key] = set()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ota-delta")

    def lookup(self, model_id: int, from_version: int, to_version: int) -> DeltaState | None:
        """The finished state of a pair, or None (and a build queued) while it is not known yet."""
        key = (model_id, from_version, to_version)
        state = self._final.get(key)
        if state is None:
            self.request(model_id, from_version, to_version)
        else:
            with self._lock, contextlib.suppress(KeyError):
                self._final.move_to_end(key)
        return state

    @property
    def known_pairs(self) -> int:
        """How many pairs this process remembers (finished, or waiting to be asked again); at most
        ``2 × cache_pairs`` plus those queued."""
        with self._lock:
            return len(self._final) + len(self._retry_at) + len(self._queued)

    def request(self, model_id: int, from_version: int, to_version: int) -> None:
        """Queue the pair unless it is finished, queued, or recently found being built elsewhere."""
        key = (model_id, from_version, to_version)
        with self._lock:
            if key in self._final or key in self._queued or time.monotonic() < self._retry_at.get(key, 0.0):
                return
            self._queued.add(key)
        self._executor.submit(self._ensure, key)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _settle(self, key: Key, state: DeltaState | None, retry_in: float = 0.0) -> None:
        with self._lock:
            self._queued.discard(key)
            self._retry_at.pop(key, None)
            if state is not None:
                self._final[key] = state
                _trim(self._final, self.cache_pairs)
            else:
                self._retry_at[key] = time.monotonic() + retry_in
                _trim(self._retry_at, self.cache_pairs)

    def _ensure(self, key: Key) -> None:
        """Worker: find the pair's row, or claim and build it. The top of a job: nothing escapes."""
        try:
            self._settle(key, *self._find_or_build(key))
        except (DatabaseUnavailableError, StorageUnavailableError) as e:
            log.warning("delta %s→%s of model %s postponed: %s", key[1], key[2], key[0], e.detail)
            self._settle(key, None, RETRY_FAILED_IO)
        except Exception:  # a bug in a background job: log it, free the pair; the claim expires and is retried
            log.exception("delta %s→%s of model %s failed unexpectedly", key[1], key[2], key[0])
            self._settle(key, None, RETRY_FAILED_IO)

    def _find_or_build(self, key: Key) -> tuple[DeltaState | None, float]:
        model_id, from_version, to_version = key
        with self.db.session() as session:
            row = delta_data.get_delta(session, model_id=model_id, from_version=from_version, to_version=to_version)
            if row is not None and row.status in delta_data.FINAL:
                return DeltaState(row.status, row.sha256, row.length), 0.0
            old = registry_data.get_version(session, model_id=model_id, version=from_version)
            new = registry_data.get_version(session, model_id=model_id, version=to_version)
            if old is None or new is None or from_version >= to_version:
                return UNKNOWN_BASE, 0.0
            if old.collected_at is not None or new.collected_at is not None:  # its blobs are gone (storage GC)
                return COLLECTED, 0.0
            claimed = delta_data.claim_delta(
                session,
                model_id=model_id,
                from_version=from_version,
                to_version=to_version,
                claimer=self.claimer,
                stale_before=utcnow() - timedelta(seconds=self.claim_timeout),
            )
            session.commit()
        if not claimed:
            return None, RETRY_PENDING
        return self._build(key, old, new), 0.0

    def _build(self, key: Key, old: ModelVersion, new: ModelVersion) -> DeltaState:
        model_id, from_version, to_version = key
        started = time.perf_counter()
        try:
            old_onnx, new_onnx = self._onnx(old), self._onnx(new)
            delta = A.make_delta(old_onnx, new_onnx)
            A.install_delta(_published(new), old_onnx, delta)
        except A.ArtifactError as e:
            state = DeltaState("failed")
            error: str | None = f"{type(e).__name__}: {e}"[:500]
        else:
            error = None
            if len(delta) >= self.max_ratio * new.payload_length:
                state = DeltaState("oversize", None, len(delta))
            else:
                state = DeltaState("ready", self.storage.put(delta), len(delta))
        with self.db.session() as session:
            finished = delta_data.finish_delta(
                session,
                model_id=model_id,
                from_version=from_version,
                to_version=to_version,
                claimer=self.claimer,
                status=state.status,
                sha256=state.sha256,
                length=state.length,
                error=error,
            )
            session.commit()
        self.metrics.delta_builds.labels(state.status).inc()
        self.metrics.delta_seconds.observe(time.perf_counter() - started)
        log.info(
            "delta built %s→%s %s by %s",
            from_version,
            to_version,
            state.status,
            self.claimer,
            extra={
                "fields": {
                    "model_id": model_id,
                    "from": from_version,
                    "to": to_version,
                    "status": state.status,
                    "length": state.length,
                    "payload": new.payload_length,
                    "recorded": finished,
                }
            },
        )
        return state

    def _onnx(self, version: ModelVersion) -> bytes:
        """The decoded model of a version: its stored ONNX blob, or rebuilt from the payload if that is gone."""
        published = _published(version)
        try:
            data = self.storage.get(version.onnx_sha256)
        except BlobNotFoundError:
            data = A.install_full(published, self.storage.get(version.payload_sha256), what="stored payload")
            self.storage.put(data)
            return data
        return A.verify_onnx(published, data, what="stored ONNX model")


def _trim(cache: OrderedDict[Key, Any], size: int) -> None:
    while len(cache) > size:
        cache.popitem(last=False)


def _published(version: ModelVersion) -> A.VerifiedManifest:
    """The manifest the door verified when this version was published (rows are written only after it)."""
    sigs = tuple(A.Signature.from_dict(s) for s in json.loads(version.signatures))
    return A.VerifiedManifest(A.parse_manifest(version.manifest_bytes), version.manifest_bytes, sigs)
