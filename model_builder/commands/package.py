"""`model-builder package RUN --name NAME --version N --key KEY --out FILE`: export, golden set, sign."""

from __future__ import annotations

import argparse
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np

from artifact import load_private_key
from model_builder.errors import CommandError, ExportError, PackageError
from model_builder.fsutil import write_atomic
from model_builder.package import build_artifact


def package_run(
    run: Path,
    *,
    name: str,
    version: int,
    key: Path,
    out: Path,
    parent_version: int | None = None,
    expires_days: float | None = None,
    onnx_path: Path | None = None,
) -> tuple[Path, int]:
    """Export the run (unless an ONNX file is given), build and sign its artifact; returns (path, size)."""
    from model_builder.checkpoint import load_checkpoint
    from model_builder.export import export_run

    signing_key = load_private_key(key)  # fail on a bad key before minutes of export work
    ckpt = load_checkpoint(run)
    run_dir = run if run.is_dir() else run.parent
    if onnx_path is None and isinstance(ckpt.get("compression"), dict):
        # A compressed run ships its deployable encoding (model.onnx); re-exporting best.pt would send floats.
        onnx_path = run_dir / "model.onnx"
        if not onnx_path.is_file():
            raise PackageError(f"{run_dir} is a compressed run without its model.onnx; run compress again")
    if onnx_path is None:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                report = export_run(run, Path(tmp) / "model.onnx")
            except ExportError as e:
                raise PackageError(f"export failed: {e}") from e  # the same error, said as a packaging step
            onnx_bytes = report.path.read_bytes()
    else:
        onnx_bytes = onnx_path.read_bytes()
    samples: list[np.ndarray] = []
    if (run_dir / "samples.npz").is_file():
        with np.load(run_dir / "samples.npz", allow_pickle=False) as z:
            samples = list(z["images"])
    m = ckpt.get("metrics", {})
    metrics: dict[str, float | int] = {
        "accuracy": float(m.get("val_accuracy", 0.0)),
        "val_loss": float(m.get("val_loss", 0.0)),
        "params": int(m.get("params", 0)),
        "density": float(m.get("density", 1.0)),
        "bits": int(m.get("bits", 32)),
    }
    for extra in ("accuracy_before", "epoch", "method_kmeans", "method_int8"):
        if extra in m:
            metrics[extra] = m[extra]
    data, _manifest = build_artifact(
        onnx_bytes,
        name=name,
        version=version,
        labels=list(ckpt["labels"]),
        preprocess=dict(ckpt["preprocess"]),
        metrics=metrics,
        sample_images=samples,
        keys=[signing_key],
        parent_version=parent_version,
        expires_in=timedelta(days=expires_days) if expires_days else None,
    )
    write_atomic(out, data)
    return out, len(data)


def _package(args: argparse.Namespace) -> int:
    if args.version < 1:
        raise CommandError("--version must be a positive integer")
    path, size = package_run(
        args.run,
        name=args.name,
        version=args.version,
        key=args.key,
        out=args.out,
        parent_version=args.parent_version,
        expires_days=args.expires_days,
        onnx_path=args.onnx,
    )
    print(f"wrote {path}: {size:,} bytes, {args.name} v{args.version}, signed")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("package", help="export a run and write a signed, versioned artifact")
    p.add_argument("run", type=Path, metavar="RUN")
    p.add_argument("--name", required=True, help="model name, [a-z0-9][a-z0-9._-]{0,63}")
    p.add_argument("--version", type=int, required=True)
    p.add_argument("--key", type=Path, required=True, metavar="KEY", help="private key (DIR/signing.key)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE")
    p.add_argument("--parent-version", type=int, default=None, help="the version this one was fine-tuned from")
    p.add_argument("--expires-days", type=float, default=None, help="manifest expiry (default: never)")
    p.add_argument("--onnx", type=Path, default=None, help="package this ONNX file instead of exporting the run")
    p.set_defaults(func=_package)
