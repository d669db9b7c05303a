"""HTTP Range requests (RFC 9110 §14) for blob downloads: one byte range, or the whole blob.

Devices resume interrupted downloads with a single range; that is all this serves. A header this
server does not understand (another unit, several ranges, a malformed spec) is ignored — the
answer is the whole blob with 200, as the RFC allows. A range that starts past the end is 416.
"""

from __future__ import annotations

from ..errors import RangeNotSatisfiableError


def parse_range(
    header: str | None, size: int, *, if_range: str | None = None, etag: str = ""
) -> tuple[int, int] | None:
    """The half-open ``(start, stop)`` to serve, or None for the whole blob."""
    if not header:
        return None
    if if_range is not None and if_range.strip() != etag:
        return None  # the client's copy is of another blob: send the whole thing
    unit, sep, spec = header.strip().partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    first, last = first.strip(), last.strip()
    try:
        if not first:  # suffix range: the last N bytes
            n = int(last)
            if n < 0 or not last.isdigit():
                return None
            if n == 0 or size == 0:
                raise RangeNotSatisfiableError(f"bytes=-{n} selects nothing of a {size}-byte blob", size=size)
            return max(0, size - n), size
        if not first.isdigit() or (last and not last.isdigit()):
            return None
        start = int(first)
        stop = size if not last else min(int(last) + 1, size)
        if last and int(last) < start:
            return None  # invalid spec: ignore the header
        if start >= size:
            raise RangeNotSatisfiableError(
                f"range starts at byte {start}, past the end of a {size}-byte blob", size=size
            )
        return start, stop
    except ValueError:
        return None
