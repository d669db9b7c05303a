"""OTA server: model registry, device enrollment and auth, update polling with deltas, blob storage.

Public face: :func:`create_app` (settings in, FastAPI app out), :class:`Settings` /
:func:`load_settings` (the `OTA_*` configuration), :func:`upgrade` (database migrations) and the
error tree in :mod:`server.errors`. Everything else is internal.

The names are imported on first use, so that `ota-server migrate` or `create-token` start without
loading the web stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import errors
    from .app import create_app
    from .config import Settings, load_settings
    from .db.migrate import upgrade

__all__ = ["Settings", "create_app", "errors", "load_settings", "upgrade"]
_WHERE = {"create_app": ".app", "Settings": ".config", "load_settings": ".config", "upgrade": ".db.migrate"}


def __getattr__(name: str) -> Any:
    if name == "errors":  # the module itself: `server.errors.OtaServerError` …
        return importlib.import_module(".errors", __name__)
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
