"""`model-builder trust init | keys | rotate`: the root of trust's documents, made offline.

    model-builder trust init   --root-key R1.key [--root-key R2.key] [--threshold N] [--expires DAYS] --out root.json
    model-builder trust keys   --root root.json --root-key R1.key … --publisher P.pub [--publisher …]
                               [--revoke KEYID|OLD.pub …] [--publisher-threshold N] --version V [--expires DAYS]
                               --out keys.json
    model-builder trust rotate --root root.json --old-root-key R1.key … --new-root-key R3.key …
                               [--threshold N] [--expires DAYS] --out root-v2.json

Root private keys stay offline (docs/security.md, "The ceremony"); each command checks what it
wrote the way a device will (:class:`artifact.TrustState`), so a document that too few root keys
signed is refused here, with one line, rather than by the fleet.
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import artifact as A
from model_builder.errors import CommandError
from model_builder.fsutil import write_atomic

from ._io import read_input

KEYID = re.compile(A.SHA256_HEX_PATTERN)
MAX_EXPIRES_DAYS = 36_525  # a century: NaN, Infinity or 1e9 days would overflow the date (a traceback)


def _expires(days: float) -> datetime:
    if not 0 < days <= MAX_EXPIRES_DAYS:
        raise CommandError(f"--expires must be a number of days above 0 and at most {MAX_EXPIRES_DAYS}, got {days}")
    return datetime.now(UTC).replace(microsecond=0) + timedelta(days=days)


def _root(path: Path) -> A.TrustState:
    return A.TrustState.from_root(read_input(path, "root document"))


def _write(path: Path, data: bytes, what: str) -> int:
    write_atomic(path, data)
    print(f"wrote {path} ({what})")
    return 0


def _init(args: argparse.Namespace) -> int:
    signers = [A.load_private_key(p) for p in args.root_key]
    extra = [A.load_public_key(p) for p in args.root_pub]
    data = A.sign_root(
        version=1,
        expires=_expires(args.expires),
        keys=[k.verify_key for k in signers] + extra,
        threshold=args.threshold,
        signers=signers,
    )
    A.TrustState.from_root(data)  # signed by its own threshold, as devices require
    return _write(args.out, data, f"root v1, threshold {args.threshold} of {len(signers) + len(extra)} key(s)")


def _revoked(values: list[str]) -> list[str]:
    ids = []
    for value in values:
        if KEYID.match(value):
            ids.append(value)
        else:
            ids.append(A.load_public_key(Path(value)).keyid)
    return ids


def _keys(args: argparse.Namespace) -> int:
    state = _root(args.root)
    data = A.sign_keys(
        version=args.version,
        expires=_expires(args.expires),
        keys=[A.load_public_key(p) for p in args.publisher],
        threshold=args.publisher_threshold,
        revoked=_revoked(args.revoke),
        signers=[A.load_private_key(p) for p in args.root_key],
    )
    state.update_keys(data, now=datetime.now(UTC))  # signed by the root's threshold: what a device checks
    return _write(args.out, data, f"keys v{args.version} under root v{state.root.version}")


def _rotate(args: argparse.Namespace) -> int:
    state = _root(args.root)
    old = [A.load_private_key(p) for p in args.old_root_key]
    new = [A.load_private_key(p) for p in args.new_root_key]
    version = state.root.version + 1
    data = A.sign_root(
        version=version,
        expires=_expires(args.expires),
        keys=[k.verify_key for k in new] + [A.load_public_key(p) for p in args.new_root_pub],
        threshold=args.threshold,
        signers=old + new,
    )
    state.update_root([data], now=datetime.now(UTC))  # old threshold and new threshold, as devices require
    return _write(args.out, data, f"root v{version}; now sign a keys document with the new root keys")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    trust = sub.add_parser("trust", help="root of trust: create a root, sign keys documents, rotate the root")
    tsub = trust.add_subparsers(dest="trust_command", metavar="ACTION", required=True)

    init = tsub.add_parser("init", help="create root v1, signed by the root keys given")
    init.add_argument("--root-key", type=Path, action="append", required=True, metavar="KEY", help="root private key")
    init.add_argument("--root-pub", type=Path, action="append", default=[], metavar="PUB", help="more root keys")
    init.add_argument("--threshold", type=int, default=1, help="root signatures a document needs (default 1)")
    init.add_argument("--expires", type=float, default=365.0, metavar="DAYS", help="valid for (default 365 days)")
    init.add_argument("--out", type=Path, required=True, metavar="root.json")
    init.set_defaults(func=_init)

    keys = tsub.add_parser("keys", help="sign a keys document: the publisher keys devices trust, and revocations")
    keys.add_argument("--root", type=Path, required=True, metavar="root.json", help="the current root document")
    keys.add_argument("--root-key", type=Path, action="append", required=True, metavar="KEY", help="root private key")
    keys.add_argument("--publisher", type=Path, action="append", required=True, metavar="PUB", help="publisher key")
    keys.add_argument("--publisher-threshold", type=int, default=1, help="publisher signatures an artifact needs")
    keys.add_argument(
        "--revoke", action="append", default=[], metavar="KEYID|PUB", help="a key never to trust again (repeat)"
    )
    keys.add_argument("--version", type=int, required=True, help="above the keys document devices hold now")
    keys.add_argument("--expires", type=float, default=90.0, metavar="DAYS", help="valid for (default 90 days)")
    keys.add_argument("--out", type=Path, required=True, metavar="keys.json")
    keys.set_defaults(func=_keys)

    rot = tsub.add_parser("rotate", help="make the next root version, signed by the old root keys and the new ones")
    rot.add_argument("--root", type=Path, required=True, metavar="root.json", help="the current root document")
    rot.add_argument("--old-root-key", type=Path, action="append", required=True, metavar="KEY")
    rot.add_argument("--new-root-key", type=Path, action="append", required=True, metavar="KEY")
    rot.add_argument("--new-root-pub", type=Path, action="append", default=[], metavar="PUB")
    rot.add_argument("--threshold", type=int, default=1, help="root signatures the new root requires (default 1)")
    rot.add_argument("--expires", type=float, default=365.0, metavar="DAYS")
    rot.add_argument("--out", type=Path, required=True, metavar="root.json")
    rot.set_defaults(func=_rotate)
