"""Upload an artifact to the server: `POST /v1/models/{model}/versions`.

Retries what may succeed later (connection errors, 5xx, 429) with jittered exponential backoff and
never what will not (4xx): a publisher wants a clear sentence about a 409 or a 422, not five
identical refusals. The answer is reported in plain words.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from tqdm import tqdm  # type: ignore[import-untyped]

from artifact import parse_manifest, read_artifact
from model_builder.errors import PublishError

CHUNK = 64 * 1024


@dataclass(frozen=True)
class PublishResult:
    status: int
    created: bool
    message: str
    body: dict[str, object]


def problem_detail(response: httpx.Response) -> str:
    """The human sentence of a server's answer: an RFC 9457 problem's `detail`, else what it said."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text.strip()[:300] or response.reason_phrase
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body)
    return str(body)


def _explain(status: int, model: str, version: int, detail: str) -> str:
    where = f"{model} v{version}"
    return {
        200: f"{where} was already published with these exact bytes; nothing changed",
        201: f"published {where}",
        401: f"the server did not accept the token: {detail}",
        403: f"this token may not publish: {detail}",
        409: f"the server refused {where} as a conflict: {detail}",
        413: f"the artifact is larger than the server accepts: {detail}",
        422: f"the server found the artifact invalid: {detail}",
    }.get(status, f"the server answered {status}: {detail}")


def publish(
    path: Path,
    server: str,
    token: str,
    *,
    retries: int = 4,
    timeout: float = 60.0,
    progress: bool = True,
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> PublishResult:
    """Upload the artifact file at `path`; raises :class:`PublishError` unless the server took it."""
    data = path.read_bytes()
    manifest = parse_manifest(read_artifact(data).manifest_bytes)  # refuse garbage before any network
    url = f"{server.rstrip('/')}/v1/models/{manifest.model}/versions"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}

    def body(bar: tqdm) -> Iterator[bytes]:
        for i in range(0, len(data), CHUNK):
            chunk = data[i : i + CHUNK]
            bar.update(len(chunk))
            yield chunk

    with httpx.Client(timeout=timeout, transport=transport) as client:
        for attempt in range(retries + 1):
            bar = tqdm(
                total=len(data),
                unit="B",
                unit_scale=True,
                desc=f"upload {manifest.model} v{manifest.version}",
                disable=not progress,
                file=sys.stderr,
                leave=False,
            )
            try:
                with bar:
                    response = client.post(
                        url, content=body(bar), headers={**headers, "Content-Length": str(len(data))}
                    )
            except httpx.TransportError as e:
                reason = f"cannot reach {server}: {e}"
            else:
                if response.status_code < 500 and response.status_code != 429:
                    message = _explain(response.status_code, manifest.model, manifest.version, problem_detail(response))
                    if response.status_code in (200, 201):
                        try:
                            payload = response.json()
                        except json.JSONDecodeError:
                            payload = {}
                        return PublishResult(response.status_code, response.status_code == 201, message, payload)
                    raise PublishError(message)
                reason = f"the server answered {response.status_code}: {problem_detail(response)}"
            if attempt == retries:
                tries = retries + 1
                raise PublishError(f"{reason} (gave up after {tries} attempt{'s' if tries > 1 else ''})")
            delay = min(30.0, 0.5 * 2**attempt) * (0.5 + random.random())
            print(f"publish: {reason}; retrying in {delay:.1f} s", file=sys.stderr)
            sleep(delay)
    raise AssertionError("unreachable")
