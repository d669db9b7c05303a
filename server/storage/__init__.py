"""Blob storage: one interface (:class:`Storage`), a `file://` and an `s3://` backend."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..config import Settings
from ..errors import ConfigurationError
from .base import BlobInfo, Storage, is_sha256, sha256_of
from .file import FileStorage
from .s3 import S3Storage

__all__ = ["BlobInfo", "FileStorage", "S3Storage", "Storage", "is_sha256", "open_storage", "sha256_of"]


def open_storage(settings: Settings) -> Storage:
    """The backend `OTA_STORAGE_URL` names: ``file://relative/or/absolute/dir`` or ``s3://bucket/prefix``."""
    url = settings.storage_url
    if url.startswith("file://"):
        # file://./ota-data/blobs (relative to the working directory) and file:///abs/path both work.
        path = unquote(url[len("file://") :])
        if not path:
            raise ConfigurationError("OTA_STORAGE_URL file:// needs a directory")
        return FileStorage(Path(path).expanduser().resolve())
    parts = urlsplit(url)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ConfigurationError("OTA_STORAGE_URL s3:// needs a bucket: s3://bucket/prefix")
        return S3Storage(
            parts.netloc,
            parts.path,
            endpoint_url=settings.s3_endpoint_url,
            public_endpoint_url=settings.s3_public_endpoint_url,
            region=settings.s3_region,
            url_seconds=settings.download_url_seconds,
            multipart_threshold=settings.s3_multipart_threshold,
            multipart_chunk=settings.s3_multipart_chunk,
        )
    raise ConfigurationError(f"OTA_STORAGE_URL scheme not supported: {url!r} (file:// or s3://)")
