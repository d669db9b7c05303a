"""Sparse tensor codes: where few words of a transformed tensor are non-zero, send where and what.

A small on-device correction changes a few percent of a tensor's values. Its SUB/XOR/PRED words
are then mostly zero, and zstd spends ~2 bytes on each lone non-zero word (a literal plus a match
for the run of zeros around it). Sending the positions instead costs close to their entropy:

- positions as gaps (zeros skipped before each non-zero word), Golomb-Rice coded with a parameter
  `k` chosen per tensor — the optimal prefix code for the geometric gaps of randomly placed changes.
  The unary quotients of all sparse tensors form one bit stream, the k-bit remainders another, so
  both encode and decode are a few vectorised numpy passes;
- the non-zero words minus one (±1 steps become 0 and 1), as byte planes like the dense data.

`choose` compares the real compressed sizes of both forms per tensor, so a tensor is sent sparse
only when that is smaller. Decoding bounds every count by the tensor's size before it allocates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._frames import U32, Reader, byte_planes, compress, inflate, plane_frames, read_planes
from .errors import DeltaFormatError

MIN_WORDS = 64  # smaller tensors stay dense: a table row and frames would outweigh any saving
MAX_K = 32  # remainders of up to 32 bits: gaps within a 2 GiB result
# Per sparse tensor: number of non-zero words (u32) and Rice parameter (u8), column by column.
_TABLE = (("count", "<u4"), ("k", "u1"))
_TABLE_ROW = sum(np.dtype(t).itemsize for _, t in _TABLE)


@dataclass(frozen=True)
class Sparse:
    """One tensor's non-zero words: positions (ascending) among `size` words, and their values."""

    size: int
    positions: np.ndarray  # int64
    values: np.ndarray  # unsigned words, all non-zero


def split(coded: np.ndarray) -> Sparse:
    positions = np.flatnonzero(coded).astype(np.int64)
    return Sparse(coded.size, positions, coded[positions])


def dense(sparse: Sparse) -> np.ndarray:
    out = np.zeros(sparse.size, dtype=sparse.values.dtype)
    out[sparse.positions] = sparse.values
    return out


def _gaps(positions: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.diff(positions, prepend=-1) - 1
    return out


def rice_parameter(gaps: np.ndarray) -> int:
    """The k that codes these gaps in the fewest bits (quotient unary + 1 stop bit + k bits)."""
    if gaps.size == 0:
        return 0
    costs = [int((gaps >> k).sum()) + gaps.size * (1 + k) for k in range(MAX_K + 1)]
    return int(np.argmin(costs))


def _rice_bits(gaps: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Unary quotients (ones, each closed by a zero) and k-bit remainders, most significant first."""
    q = gaps >> k
    unary = np.ones(int(q.sum()) + q.size, dtype=np.uint8)
    unary[np.cumsum(q + 1) - 1] = 0
    shifts = np.arange(k - 1, -1, -1, dtype=np.int64)
    rem = ((gaps[:, None] >> shifts) & 1).astype(np.uint8).reshape(-1)
    return unary, rem


def _pack(bits: list[np.ndarray], pad: int) -> bytes:
    joined = np.concatenate(bits) if bits else np.zeros(0, np.uint8)
    tail = np.full(-joined.size % 8, pad, dtype=np.uint8)
    return np.packbits(np.concatenate([joined, tail])).tobytes()


def _position_bytes(tensors: Sequence[Sparse]) -> tuple[bytes, bytes, list[int]]:
    unary, rem, ks = [], [], []
    for t in tensors:
        gaps = _gaps(t.positions)
        k = rice_parameter(gaps)
        u, r = _rice_bits(gaps, k)
        unary.append(u)
        rem.append(r)
        ks.append(k)
    return _pack(unary, 1), _pack(rem, 0), ks


def _value_planes(tensors: Sequence[Sparse]) -> tuple[list[bytes], dict[int, int]]:
    groups: dict[int, list[np.ndarray]] = {}
    for t in tensors:
        groups.setdefault(t.values.dtype.itemsize, []).append(t.values - t.values.dtype.type(1))
    planes = [p for elem in sorted(groups) for p in byte_planes(np.concatenate(groups[elem]), elem)]
    return planes, {elem: sum(v.size for v in groups[elem]) for elem in groups}


def section(tensors: Sequence[Sparse], level: int) -> bytes:
    """The sparse section: table frame, unary bits, remainder bits, value planes (in entry order)."""
    unary, rem, ks = _position_bytes(tensors)
    table = np.array([t.positions.size for t in tensors], "<u4").tobytes() + np.array(ks, "u1").tobytes()
    planes, _ = _value_planes(tensors)
    parts = [compress(table, level), unary, rem]
    return b"".join(U32.pack(len(p)) + p for p in parts) + plane_frames(planes, level)


def choose(coded: np.ndarray, elem: int, level: int) -> bool:
    """True when this tensor's words cost fewer bytes sparse than as dense byte planes."""
    nonzero = int(np.count_nonzero(coded))
    if coded.size < MIN_WORDS or nonzero * 2 > coded.size:
        return False  # too small to matter, or at least a bit per word either way: dense planes win
    sparse = split(coded)
    unary, rem, _ = _position_bytes([sparse])
    planes, _ = _value_planes([sparse])
    sparse_size = len(unary) + len(rem) + (len(plane_frames(planes, level)) if nonzero else 0)
    return sparse_size < len(plane_frames(byte_planes(coded, elem), level))


def _bits(frame: bytes) -> np.ndarray:
    return np.unpackbits(np.frombuffer(frame, dtype=np.uint8))


def read_section(r: Reader, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Read what :func:`section` wrote for tensors of (words, element width) `sizes`; dense words back.

    Every count is checked against the tensor it belongs to before anything is allocated from it.
    """
    n = len(sizes)
    table = inflate(r.frame("the sparse table"), n * _TABLE_ROW, "sparse table")
    if len(table) != n * _TABLE_ROW:
        raise DeltaFormatError("delta sparse table is truncated")
    counts = np.frombuffer(table[: 4 * n], "<u4").astype(np.int64)
    ks = np.frombuffer(table[4 * n :], "u1").astype(np.int64)
    words = np.array([w for w, _ in sizes], dtype=np.int64)
    if np.any(counts > words) or np.any(ks > MAX_K):
        raise DeltaFormatError("delta sparse table claims more changes than a tensor holds")
    unary_limit = int((counts + (words >> ks)).sum())  # quotients sum to at most size >> k per tensor
    unary_frame, rem_frame = r.frame("the sparse positions"), r.frame("the sparse positions")
    if len(unary_frame) > (unary_limit + 7) // 8 or len(rem_frame) != (int((counts * ks).sum()) + 7) // 8:
        raise DeltaFormatError("delta sparse positions do not match the sparse table")
    stops = np.flatnonzero(_bits(unary_frame) == 0)
    total = int(counts.sum())
    if stops.size < total:
        raise DeltaFormatError("delta sparse positions are truncated")
    if len(unary_frame) != ((int(stops[total - 1]) + 8) // 8 if total else 0):  # only the last byte is padded
        raise DeltaFormatError("delta sparse positions are truncated or padded")
    quotients = np.diff(stops[:total], prepend=-1) - 1
    rem_bits = _bits(rem_frame)
    per_elem: dict[int, int] = {}
    for (_, elem), count in zip(sizes, counts.tolist(), strict=True):
        per_elem[elem] = per_elem.get(elem, 0) + count
    values = read_planes(r, per_elem, total * max(per_elem, default=1), "sparse values")

    out, q_pos, r_pos, v_pos = [], 0, 0, dict.fromkeys(per_elem, 0)
    for (size, elem), count, k in zip(sizes, counts.tolist(), ks.tolist(), strict=True):
        q = quotients[q_pos : q_pos + count]
        if count and int(q.max()) > size >> k:
            raise DeltaFormatError("delta sparse position lies outside its tensor")
        bits = rem_bits[r_pos : r_pos + count * k].reshape(count, k)
        q_pos, r_pos = q_pos + count, r_pos + count * k
        gaps = q << k
        for j in range(k):  # column by column: never a (count × k) int64 matrix
            gaps |= bits[:, j].astype(np.int64) << (k - 1 - j)
        positions = np.cumsum(gaps + 1) - 1
        if count and int(positions[-1]) >= size:
            raise DeltaFormatError("delta sparse position lies outside its tensor")
        vals = values[elem][v_pos[elem] : v_pos[elem] + count]
        v_pos[elem] += count
        coded = np.zeros(size, dtype=vals.dtype)
        coded[positions] = vals + vals.dtype.type(1)
        out.append(coded)
    return out
