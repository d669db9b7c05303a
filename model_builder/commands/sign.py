"""`model-builder keygen | inspect | verify`: publisher keys and checks of artifact files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from artifact import (
    TrustPolicy,
    generate_key,
    load_public_key,
    parse_manifest,
    read_artifact,
    save_private_key,
    save_public_key,
    verify_artifact,
)
from model_builder.errors import CommandError

from ._io import read_input


def _keygen(args: argparse.Namespace) -> int:
    out: Path = args.out
    private, public = out / "signing.key", out / "signing.pub"
    if private.exists() and not args.force:
        raise CommandError(
            f"{private} already exists; pass --force to replace it "
            "(devices trusting the old signing.pub would then refuse new artifacts)"
        )
    out.mkdir(parents=True, exist_ok=True)
    key = generate_key()
    save_private_key(key, private)
    save_public_key(key, public)
    print(f"wrote {private} (mode 0600) and {public}")
    print(f"key id {key.keyid}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    parts = read_artifact(read_input(args.file, "artifact"))
    manifest = json.loads(parts.manifest_bytes)
    if args.json:
        print(json.dumps({"manifest": manifest, "signatures": parts.signature_dicts()}, indent=2, ensure_ascii=False))
        return 0
    m = parse_manifest(parts.manifest_bytes)
    print(
        f"{m.model} v{m.version} (parent {m.parent_version or '-'}), "
        f"created {m.created_at}, expires {m.expires_at or 'never'}"
    )
    print(f"payload  {m.payload.encoding}, {m.payload.length:,} bytes, sha256 {m.payload.sha256}")
    print(f"onnx     {m.onnx.length:,} bytes, opset {m.onnx.opset}, sha256 {m.onnx.sha256}")
    print(
        f"input    {m.onnx.input.name} {m.onnx.input.shape} {m.onnx.input.dtype}; "
        f"output {m.onnx.output.name} {m.onnx.output.shape}"
    )
    print(f"labels   {len(m.labels)}: {', '.join(m.labels[:10])}{' …' if len(m.labels) > 10 else ''}")
    p = m.preprocess
    print(f"preproc  {p.size} px, mean {p.mean}, std {p.std}, {p.layout}")
    print("metrics  " + ", ".join(f"{k}={v}" for k, v in sorted(m.metrics.items())))
    print(f"golden   {len(m.golden.cases)} cases, tolerance {m.golden.tolerance}")
    for s in parts.signatures:
        print(f"signed   by key {s.keyid}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    data = read_input(args.file, "artifact")
    keys = [load_public_key(p) for p in args.pubkey]
    try:
        trust = TrustPolicy.of(keys, threshold=args.threshold)
    except ValueError as e:
        raise CommandError(f"--threshold {args.threshold}: {e}") from e
    verified = verify_artifact(data, trust=trust, expected_model=args.model)
    m = verified.manifest
    print(
        f"OK: {m.model} v{m.version} — signed by {len(verified.verified.signed_by)} trusted key(s), "
        "payload and ONNX hashes match"
    )
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    kg = sub.add_parser("keygen", help="create an Ed25519 signing key pair (DIR/signing.key, DIR/signing.pub)")
    kg.add_argument("--out", type=Path, required=True, metavar="DIR")
    kg.add_argument("--force", action="store_true", help="replace an existing key")
    kg.set_defaults(func=_keygen)

    ins = sub.add_parser("inspect", help="show an artifact's manifest and signatures")
    ins.add_argument("file", type=Path, metavar="FILE")
    ins.add_argument("--json", action="store_true", help='print {"manifest": ..., "signatures": [...]}')
    ins.set_defaults(func=_inspect)

    ver = sub.add_parser(
        "verify", help="check an artifact: schema, signature, expiry, lengths, hashes (exit 0 only if valid)"
    )
    ver.add_argument("file", type=Path, metavar="FILE")
    ver.add_argument(
        "--pubkey", type=Path, action="append", required=True, metavar="PUB", help="trusted public key (repeatable)"
    )
    ver.add_argument("--threshold", type=int, default=1, help="distinct trusted signatures required (default 1)")
    ver.add_argument("--model", default=None, help="the model name the artifact must carry")
    ver.set_defaults(func=_verify)
