"""The answer to "what should I run?": an update offer, rendered for the hot path.

A published version never changes (only its revocation, which the registry view handles), so the
expensive part of an offer — manifest, its base64, signatures, digests — is rendered to bytes once
per version and cached. The manifest is spliced into the JSON *verbatim*: the ``manifest`` object a
device parses re-encodes (canonically) to exactly the signed bytes, and ``manifest_b64`` carries
those bytes for a byte-exact check without re-encoding.

What varies per request is small: the download URLs (presigned or signed, stable for half their
lifetime), whether a delta from the device's version is ready and worth it, and the device's
poll interval (``OTA_POLL_INTERVAL`` spread ±``OTA_POLL_JITTER`` by device id, so a fleet that
booted together does not poll in lockstep). The ETag names exactly those choices.
"""

from __future__ import annotations

import base64
import json
import threading
import zlib
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass

from ..data import registry as registry_data
from ..data.registry import Head
from ..db.session import Database
from ..errors import VersionNotFoundError
from ..observability import Metrics
from ..storage import Storage
from .deltas import DeltaService
from .security import Signer

_CACHE_VERSIONS = 256


@dataclass(frozen=True, slots=True)
class VersionContent:
    """The immutable part of an offer for one version."""

    version_id: int
    version: int
    payload_sha256: str
    payload_length: int
    prefix: bytes  # '{"model":…,"version":…,"manifest":{…},"manifest_b64":"…","signatures":[…]'


@dataclass(frozen=True, slots=True)
class Offer:
    body: bytes
    etag: str
    delta_length: int | None  # None: the device downloads the full payload
    download_length: int


def render_content(
    *,
    model: str,
    version: int,
    version_id: int,
    manifest: bytes,
    signatures: str,
    payload_sha256: str,
    payload_length: int,
) -> VersionContent:
    head = json.dumps({"model": model, "version": version}, separators=(",", ":")).encode()
    prefix = b"".join(
        [
            head[:-1],
            b',"manifest":',
            manifest,
            b',"manifest_b64":"',
            base64.b64encode(manifest),
            b'","signatures":',
            signatures.encode("utf-8"),
        ]
    )
    return VersionContent(version_id, version, payload_sha256, payload_length, prefix)


def etag_matches(header: str | None, etag: str) -> bool:
    """If-None-Match with weak comparison (RFC 9110 §13.1.2)."""
    if not header:
        return False
    if header.strip() == "*":
        return True
    ours = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == ours for tag in header.split(","))


class Offers:
    def __init__(
        self,
        db: Database,
        storage: Storage,
        signer: Signer,
        deltas: DeltaService,
        metrics: Metrics,
        *,
        poll_interval: int,
        poll_jitter: float,
        url_seconds: int,
        max_ratio: float,
    ) -> None:
        self.db = db
        self.storage = storage
        self.signer = signer
        self.deltas = deltas
        self.metrics = metrics
        self.base_interval = poll_interval
        self.jitter = poll_jitter
        self.url_seconds = url_seconds
        self.max_ratio = max_ratio
        self._content: OrderedDict[int, VersionContent] = OrderedDict()
        self._lock = threading.Lock()

    def poll_interval(self, device_id: str) -> int:
        spread = (zlib.crc32(device_id.encode("utf-8")) / 0xFFFFFFFF) * 2 - 1  # stable per device, in [-1, 1]
        return max(1, round(self.base_interval * (1 + self.jitter * spread)))

    def cached_content(self, version_id: int) -> VersionContent | None:
        return self._content.get(version_id)

    def load_content(self, version_id: int, model: str) -> VersionContent:
        """Render and cache a version's offer prefix (blocking: one query)."""
        with self.db.session() as session:
            row = registry_data.get_version_by_id(session, version_id=version_id)
            if row is None:
                raise VersionNotFoundError(f"version row {version_id} of {model!r} disappeared")
            content = render_content(
                model=model,
                version=row.version,
                version_id=row.id,
                manifest=row.manifest_bytes,
                signatures=row.signatures,
                payload_sha256=row.payload_sha256,
                payload_length=row.payload_length,
            )
        with self._lock:
            self._content[version_id] = content
            while len(self._content) > _CACHE_VERSIONS:
                self._content.popitem(last=False)
        return content

    def download_url(self, sha256: str, base_url: str) -> str:
        url = self.storage.url_for(sha256)
        if url.startswith("/"):
            return base_url + self.signer.sign_blob_path(url, sha256, ttl=self.url_seconds)
        return url

    def build(
        self,
        *,
        head: Head,
        content: VersionContent,
        current_version: int | None,
        interval: int,
        base_url: str,
        published: Collection[int] = (),
    ) -> Offer:
        """The offer body for a device running `current_version` (None: unknown).

        A delta is looked up (and queued) only from a version in `published`, the model's published
        versions: whatever a device claims to run, it cannot make the server track pairs that do not exist.
        """
        delta_doc = None
        delta_tag = "full"
        delta_length = None
        if current_version is not None and 1 <= current_version < head.version and current_version in published:
            state = self.deltas.lookup(head.model_id, current_version, head.version)
            if (
                state is not None
                and state.status == "ready"
                and state.sha256 is not None
                and state.length is not None
                and state.length < self.max_ratio * content.payload_length
            ):
                delta_doc = {
                    "from_version": current_version,
                    "url": self.download_url(state.sha256, base_url),
                    "length": state.length,
                    "sha256": state.sha256,
                }
                delta_tag, delta_length = state.sha256[:16], state.length
        download = {
            "url": self.download_url(content.payload_sha256, base_url),
            "length": content.payload_length,
            "sha256": content.payload_sha256,
        }
        tail = json.dumps({"download": download, "delta": delta_doc, "poll_interval": interval}, separators=(",", ":"))
        body = content.prefix + b"," + tail[1:].encode("utf-8")
        etag = f'W/"{head.version}-{content.payload_sha256[:16]}-{delta_tag}-{interval}"'
        return Offer(body=body, etag=etag, delta_length=delta_length, download_length=content.payload_length)

    def count(self, offer: Offer) -> None:
        if offer.delta_length is None:
            self.metrics.offers_full.inc()
            self.metrics.offer_bytes_full.inc(offer.download_length)
        else:
            self.metrics.offers_delta.inc()
            self.metrics.offer_bytes_delta.inc(offer.delta_length)
