"""What compression achieved, measured on the artifact itself: sizes, entropy, density, bits, latency.

Every number here is read back from the deployable ONNX (the decoded weights as ONNX Runtime
computes them, the index tensors as they travel), never from the PyTorch side's intentions: a
report that restated the configuration could not catch an encoder that silently kept floats.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

import artifact as A
from model_builder.compress.encode import decoded_weights, index_streams
from model_builder.compress.finetune import session
from model_builder.compress.prune import entropy_of_density


def order0_bits(symbols: np.ndarray) -> float:
    """Total bits of ``symbols`` under their own order-0 (memoryless) entropy: the bound a coder of
    independent symbols can reach."""
    if symbols.size == 0:
        return 0.0
    counts = np.bincount(symbols.reshape(-1).astype(np.int64))
    p = counts[counts > 0] / symbols.size
    return float(-(p * np.log2(p)).sum() * symbols.size)


def zstd_bytes(data: bytes) -> int:
    """Size under the payload codec's own settings (``artifact.encode_payload``)."""
    return len(A.encode_payload(data))


@dataclass(frozen=True)
class LayerStats:
    name: str
    weights: int
    nonzero: int
    distinct: int

    @property
    def density(self) -> float:
        return self.nonzero / self.weights


def layer_stats(onnx_bytes: bytes) -> list[LayerStats]:
    """Per Conv: weights, non-zeros and distinct values of the weight ONNX Runtime decodes."""
    out = []
    for name, w in decoded_weights(onnx_bytes).items():
        out.append(LayerStats(name, int(w.size), int(np.count_nonzero(w)), int(np.unique(w).size)))
    return out


def stream_report(onnx_bytes: bytes) -> dict[str, Any]:
    """How close the transmitted index and mask bytes come to their entropy.

    Each stream is compressed alone with the payload codec (inside the payload they share zstd's
    blocks with the rest of the graph, so this is an estimate of their share). The bound for the
    indices is the per-layer order-0 entropy (each layer has its own codebook, so its own symbol
    statistics); for the masks it is the binary entropy of each layer's density, h(p) bits per weight.
    """
    streams = index_streams(onnx_bytes)
    if not streams:
        return {}
    index_bits = sum(order0_bits(s["index"]) for s in streams.values())
    index_raw = b"".join(s["index"].tobytes() for s in streams.values())
    nnz = sum(s["index"].size for s in streams.values())
    masks = {n: s["mask"] for n, s in streams.items() if "mask" in s}
    mask_raw = b"".join(m.tobytes() for m in masks.values())
    mask_bits = 0.0
    for name, m in masks.items():
        kept = int(streams[name]["index"].size)
        total = int(np.unpackbits(m).size)  # padded to a multiple of 8; the pad is at most 7 bits
        mask_bits += total * entropy_of_density(kept / total)
    out: dict[str, Any] = {
        "indices": nnz,
        "index_raw_bytes": len(index_raw),
        "index_entropy_bytes": round(index_bits / 8),
        "index_zstd_bytes": zstd_bytes(index_raw),
        "index_entropy_bits_per_weight": index_bits / max(nnz, 1),
    }
    if masks:
        out |= {
            "mask_raw_bytes": len(mask_raw),
            "mask_entropy_bytes": round(mask_bits / 8),
            "mask_zstd_bytes": zstd_bytes(mask_raw),
        }
    return out


def ort_timing(onnx_bytes: bytes, image_size: int, runs: int = 100, threads: int = 1) -> dict[str, float]:
    """Median session creation and batch-1 latency (ms), one thread: the device's view of the model.

    Session creation includes graph optimisation, which is where the index tensors are folded into
    float weights, so it is the one-time price of the compact encoding.
    """
    x = np.random.default_rng(0).standard_normal((1, 3, image_size, image_size)).astype(np.float32)
    creations = []
    for _ in range(3):
        t0 = time.perf_counter()
        sess = session(onnx_bytes, threads)
        creations.append(time.perf_counter() - t0)
    name = sess.get_inputs()[0].name
    for _ in range(10):
        sess.run(None, {name: x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t0)
    return {"session_ms": statistics.median(creations) * 1e3, "latency_ms": statistics.median(times) * 1e3}


def _pct(x: float) -> str:
    return f"{x:.2%}"


def format_report(report: dict[str, Any]) -> str:
    """The human summary ``model-builder compress`` prints (compression.json holds everything)."""
    acc = report["accuracy"]
    size = report["size"]
    cfg = report["config"]
    lines = [
        f"compressed {report['parent']} -> {report['out']}: {cfg['method']}"
        + (f", {cfg['bits']} bits" if cfg["method"] == "kmeans" else ", int8 QDQ")
        + f", density {report['achieved']['density']:.1%} in {report['seconds']:.0f} s",
    ]
    sched = report.get("schedule")
    if sched:
        per = sched["steps_per_epoch"]
        lines.append(
            f"fine-tuning: {sched['masked_steps']:,} masked steps ({sched['masked_steps'] / per:.1f} epochs, "
            f"{sched['prune_rounds']} pruning round(s)) + {sched['codebook_steps']:,} codebook steps "
            f"({sched['codebook_steps'] / per:.1f} epochs) of {sched['batch_size']} images; "
            f"{sched['train_images']:,} training images, {per} steps an epoch; chosen by {sched['rule']}"
        )
    loss = (acc["fp32"] - acc["final"]) * 100
    change = f"{loss:.2f} points lost" if loss > 0 else f"{-loss:.2f} points gained"
    lines += [
        f"accuracy: {acc['fp32']:.2%} fp32 parent -> {acc['final']:.2%} compressed ({change}; "
        f"--max-loss {report.get('max_loss', float('nan')):g})",
        "",
        "| stage | val accuracy |",
        "| --- | ---: |",
    ]
    for label, key in (
        ("fp32 parent", "fp32"),
        (f"pruned to {cfg['density']:.0%} at once, no fine-tuning", "pruned_no_finetune"),
        ("pruned, after masked fine-tuning", "pruned"),
        (f"shared to {cfg['bits']} bits, before centroid fine-tuning", "shared_no_finetune"),
        ("final (what the artifact runs)", "final"),
    ):
        if acc.get(key) is not None:
            lines.append(f"| {label} | {_pct(acc[key])} |")
    lines += [
        "",
        "| model | bits | density | ONNX bytes | payload bytes | vs fp32 payload | session ms | latency ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, key, bits, density in (
        ("fp32 parent", "fp32", 32, 1.0),
        ("compressed", "compressed", cfg["bits"], report["achieved"]["density"]),
    ):
        s, t = size[key], report["timing"][key]
        lines.append(
            f"| {label} | {bits} | {density:.1%} | {s['onnx_bytes']:,} | {s['payload_bytes']:,} | "
            f"{size['fp32']['payload_bytes'] / s['payload_bytes']:.1f}x | {t['session_ms']:.1f} | "
            f"{t['latency_ms']:.2f} |"
        )
    ach = report["achieved"]
    lines += [
        "",
        f"decoded from the ONNX: {ach['nonzero']:,} of {ach['weights']:,} conv weights non-zero "
        f"({ach['density']:.2%}), at most {ach['max_distinct']} distinct values in a layer",
    ]
    st = report.get("streams") or {}
    if st:
        lines.append(
            f"indices: {st['indices']:,} x uint8, zstd {st['index_zstd_bytes']:,} B vs order-0 entropy "
            f"{st['index_entropy_bytes']:,} B ({st['index_entropy_bits_per_weight']:.2f} bits/index, zstd "
            f"at {st['index_zstd_bytes'] / max(st['index_entropy_bytes'], 1):.3f}x)"
        )
        if "mask_zstd_bytes" in st:
            lines.append(
                f"masks: zstd {st['mask_zstd_bytes']:,} B vs entropy {st['mask_entropy_bytes']:,} B "
                f"({st['mask_zstd_bytes'] / max(st['mask_entropy_bytes'], 1):.3f}x)"
            )
    return "\n".join(lines)
