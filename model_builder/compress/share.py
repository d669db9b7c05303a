"""Weight sharing: per-layer k-means codebooks, and fine-tuning of the codebook entries themselves.

Each convolution's surviving weights are replaced by one of ``2^bits − 1`` shared values (a pruned
layer also keeps an exact ``0``, index 0, for its pruned positions), so a layer has at most
``2^bits`` distinct values and each weight is stored as a small integer index.

- **Linear initialisation** between the smallest and the largest surviving weight, as Deep
  Compression found best: density-based initialisation puts the centroids where most weights are
  (near the pruning threshold) and starves the few large weights that matter most.
- **1-D Lloyd iterations** by sorting: in one dimension every cluster is an interval, so assignment
  is a ``searchsorted`` against the midpoints and the centroids stay in order (an empty cluster keeps
  its place; its neighbours' means cannot cross it).
- **Entropy-constrained** (``rate_weight`` > 0, the default): the indices travel entropy-coded (zstd's
  Huffman stage, as Deep Compression Huffman-codes them), so what costs bytes is their entropy, not
  ``bits``. Plain k-means spreads the weights evenly over the centroids, which maximises that
  entropy. ECSQ (Chou, Lookabaugh & Gray 1989; for network weights Choi, El-Khamy & Lee 2017, who
  found k-means + Huffman well short of it) assigns each weight to the centroid minimising
  ``(w − c)² + λ · (−log2 share(c))`` with ``λ = rate_weight · Δ²``, ``Δ`` the linear grid's step: a
  weight moves to a more common neighbour only when that saves more bits than it costs in error.
  Measured on the demo (33 %, 6 bits, same pruned model): plain k-means 5.08 bits per index, payload
  255.8 kB, 90.2 % val; rate_weight 0.2: 4.60 bits, 244.4 kB, 90.5 %; 0.3: 4.29 bits, 234.8 kB,
  90.7 % (accuracy after centroid fine-tuning). A layer still has at most ``2^bits`` values. λ is
  kept per layer so that a child compressed from this one assigns the same way.
- **Centroid fine-tuning**: the weight is parametrized as ``codebook[index]``; the backward of that
  gather sums the gradients of a centroid's members, which is exactly the paper's update. Masks and
  assignments stay fixed, so training moves only ``2^bits`` numbers per layer (plus the biases).
- **Starting from a parent's codebooks** (``init``): weights are assigned to the nearest parent
  centroid and Lloyd is skipped, so a fine-tuned child keeps the parent's assignment wherever its
  weights did not cross a cluster boundary: those indices cost nothing in a delta.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from model_builder.compress.prune import conv_layers

MAX_LLOYD_ITERATIONS = 60


@dataclass
class LayerCode:
    """One shared layer: ``weight = codebook[index]``.

    ``codebook`` is float32 ``(K,)``; ``index`` is uint8 with the weight's shape. When ``pruned``,
    ``codebook[0] == 0`` exactly and index 0 marks the pruned positions (the mask is ``index != 0``);
    otherwise every index names a learned centroid.
    """

    codebook: torch.Tensor
    index: torch.Tensor
    pruned: bool
    rate_penalty: float = 0.0  # λ of the entropy-constrained assignment (0: nearest centroid)

    def decode(self) -> torch.Tensor:
        return self.codebook[self.index.long()]  # (O, I, kh, kw) float32

    @property
    def mask(self) -> torch.Tensor:
        return self.index != 0 if self.pruned else torch.ones_like(self.index, dtype=torch.bool)

    def to_state(self) -> dict[str, torch.Tensor | bool | float]:
        """Plain tensors for the checkpoint (loads with ``weights_only=True``)."""
        return {
            "codebook": self.codebook.clone(),
            "index": self.index.clone(),
            "pruned": self.pruned,
            "rate_penalty": self.rate_penalty,
        }

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor | bool | float]) -> LayerCode:
        codebook, index = state["codebook"], state["index"]
        if not isinstance(codebook, torch.Tensor) or not isinstance(index, torch.Tensor):
            raise ValueError("a layer code needs codebook and index tensors")
        penalty = float(state.get("rate_penalty", 0.0))
        return cls(codebook.to(torch.float32), index.to(torch.uint8), bool(state["pruned"]), penalty)

    def code_lengths(self) -> torch.Tensor:
        """``−log2`` of each codebook entry's share of the kept weights (what an index costs)."""
        kept = self.index[self.index != 0] if self.pruned else self.index
        counts = torch.bincount(kept.flatten().long(), minlength=len(self.codebook)).to(torch.float64)
        lengths = -torch.log2(counts / counts.sum().clamp(min=1))
        return lengths[1:] if self.pruned else lengths  # entry 0 of a pruned layer is the pruned zero


def kmeans_1d(
    values: torch.Tensor,
    centroids: torch.Tensor,
    iterations: int = MAX_LLOYD_ITERATIONS,
    rate_penalty: float = 0.0,
    code_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's algorithm on scalars: (centroids, assignment), centroids in the order they were given.

    ``iterations=0`` only assigns each value to its nearest centroid. Keeping the caller's order
    matters for a parent's codebook: an index must keep naming the same entry. Runs in float64 so
    that the cluster means do not depend on summation order.

    ``rate_penalty`` λ > 0 makes it entropy-constrained (see module doc): the cost of a centroid is
    ``(x − c)² + λ · code_length``, code lengths being ``−log2`` of the current shares (all 0 at the
    start, or ``code_lengths`` given with ``iterations=0`` to assign the way a parent did). A centroid
    nobody chooses drops out (it keeps its value; callers drop unused entries).
    """
    if rate_penalty > 0:
        return _ecsq(values, centroids, iterations, rate_penalty, code_lengths)
    x = values.detach().to(torch.float64).flatten()
    c, order = torch.sort(centroids.detach().to(torch.float64))
    labels = torch.bucketize(x, (c[1:] + c[:-1]) / 2)
    for _ in range(iterations):
        counts = torch.bincount(labels, minlength=len(c))
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        c = torch.where(counts > 0, sums / counts.clamp(min=1), c)
        new = torch.bucketize(x, (c[1:] + c[:-1]) / 2)
        if torch.equal(new, labels):
            break
        labels = new
    out = torch.empty_like(c)
    out[order] = c
    return out.to(torch.float32), order[labels]


def _ecsq(
    values: torch.Tensor, centroids: torch.Tensor, iterations: int, lam: float, lengths: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    x = values.detach().to(torch.float64).flatten()
    c = centroids.detach().to(torch.float64).clone()
    ell = torch.zeros_like(c) if lengths is None else lengths.to(torch.float64)

    def assign() -> torch.Tensor:
        labels = torch.empty(len(x), dtype=torch.long)
        for start in range(0, len(x), 1 << 15):  # (chunk × K) cost matrix: a few MB at a time
            chunk = x[start : start + (1 << 15), None]
            labels[start : start + len(chunk)] = ((chunk - c) ** 2 + lam * ell).argmin(1)
        return labels

    labels = assign()
    for _ in range(iterations):
        counts = torch.bincount(labels, minlength=len(c)).to(torch.float64)
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        c = torch.where(counts > 0, sums / counts.clamp(min=1), c)
        ell = torch.where(counts > 0, -torch.log2(counts.clamp(min=1) / len(x)), torch.inf)
        new = assign()
        if torch.equal(new, labels):
            break
        labels = new
    return c.to(torch.float32), labels


def share_layer(
    weight: torch.Tensor,
    mask: torch.Tensor | None,
    bits: int,
    init: LayerCode | None = None,
    rate_weight: float = 0.0,
) -> LayerCode:
    """Cluster one layer's surviving weights into a codebook (see module doc).

    ``mask`` None means a dense layer: all ``2^bits`` entries are centroids. ``init`` is a parent's
    code: its codebook is kept and each weight assigned the way the parent assigned (same λ, the
    parent's code lengths). ``rate_weight`` scales the entropy constraint (0: plain k-means).
    """
    w = weight.detach().cpu().to(torch.float32)
    keep = mask.cpu() if mask is not None else torch.ones_like(w, dtype=torch.bool)
    survivors = w[keep]  # (nnz,)
    k = 2**bits - (1 if mask is not None else 0)
    penalty = 0.0
    if init is not None:
        start = init.codebook[1:] if mask is not None else init.codebook
        penalty = init.rate_penalty
        lengths = init.code_lengths() if penalty > 0 else None
        centroids, labels = kmeans_1d(survivors, start, iterations=0, rate_penalty=penalty, code_lengths=lengths)
    else:
        unique = torch.unique(survivors)
        if len(unique) <= k:  # few distinct values (a tiny or already shared layer): each is its own centroid
            centroids, labels = kmeans_1d(survivors, unique, iterations=0)
        else:
            lo, hi = float(survivors.min()), float(survivors.max())
            penalty = rate_weight * ((hi - lo) / (k - 1)) ** 2
            centroids, labels = kmeans_1d(survivors, torch.linspace(lo, hi, k), rate_penalty=penalty)
        centroids, labels = _by_frequency(centroids, labels)
    index = torch.zeros(w.shape, dtype=torch.uint8)
    if mask is not None:
        index[keep] = (labels + 1).to(torch.uint8)
        codebook = torch.cat([torch.zeros(1), centroids])
    else:
        index[keep] = labels.to(torch.uint8)
        codebook = centroids
    return LayerCode(codebook.contiguous(), index, mask is not None, penalty)


def _by_frequency(centroids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Renumber centroids from the most used down, dropping unused ones.

    Decoding does not care about the order, but the payload does: zstd codes a block's bytes with one
    Huffman table, and a block holds the indices of several layers. Numbered by frequency, every
    layer's index histogram has the same falling shape, so one table fits them all: measured 4 %
    smaller index bytes than in value order (1.015x of the per-layer entropy instead of 1.056x).
    Dropping centroids no weight chose (linear initialisation leaves some inside the pruned gap)
    shortens the codebook.
    """
    counts = torch.bincount(labels, minlength=len(centroids))
    order = sorted(range(len(centroids)), key=lambda i: (-int(counts[i]), float(centroids[i])))
    order = [i for i in order if counts[i] > 0]
    rank = torch.full((len(centroids),), -1, dtype=torch.long)
    rank[torch.tensor(order)] = torch.arange(len(order))
    return centroids[torch.tensor(order)], rank[labels]


def share_weights(
    model: nn.Module,
    masks: dict[str, torch.Tensor] | None,
    bits: int,
    init: dict[str, LayerCode] | None = None,
    rate_weight: float = 0.0,
) -> dict[str, LayerCode]:
    """A :class:`LayerCode` per convolution; ``masks`` None shares every layer dense."""
    codes: dict[str, LayerCode] = {}
    for name, conv in conv_layers(model).items():
        mask = masks[name] if masks is not None else None
        start = init[name] if init is not None else None
        codes[name] = share_layer(conv.weight, mask, bits, start, rate_weight)
    return codes


class SharedWeight(nn.Module):
    """Parametrization ``weight = codebook[index]`` whose trainable tensor is the codebook.

    For a pruned layer only the non-zero centroids are trainable; entry 0 is a constant zero
    prepended in ``forward``, so the summed gradient of the pruned positions moves nothing.
    """

    index: torch.Tensor

    def __init__(self, code: LayerCode) -> None:
        super().__init__()
        self.register_buffer("index", code.index.long())
        self.pruned = code.pruned
        self._start = (code.codebook[1:] if code.pruned else code.codebook).clone()

    def forward(self, centroids: torch.Tensor) -> torch.Tensor:
        table = F.pad(centroids, (1, 0)) if self.pruned else centroids  # (K,)
        return table[self.index]  # (O, I, kh, kw): backward sums each centroid's members' gradients

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return self._start.to(weight.device)


def attach_codes(model: nn.Module, codes: dict[str, LayerCode]) -> None:
    """Make ``model``'s convolutions read their weights from trainable codebooks (undo with ``detach``)."""
    layers = conv_layers(model)
    for name, code in codes.items():
        conv = layers[name]
        if tuple(code.index.shape) != tuple(conv.weight.shape):
            raise ValueError(
                f"code for {name} has shape {list(code.index.shape)}, the weight {list(conv.weight.shape)}"
            )
        parametrize.register_parametrization(conv, "weight", SharedWeight(code), unsafe=True)


HALF_MAX = 65504.0


def round_to_half(model: nn.Module) -> None:
    """Round the trainable codebooks and every convolution's bias to the nearest float16, in place.

    The encoding stores them in half precision (see ``encode.py``), so the PyTorch model must hold
    exactly those numbers for the decoded ONNX model to equal it. A value beyond float16's range
    stays as it is (and then travels as float32).
    """
    with torch.no_grad():
        for conv in conv_layers(model).values():
            tensors = [conv.parametrizations["weight"].original]  # type: ignore[index, union-attr]
            if conv.bias is not None:
                tensors.append(conv.bias)
            for t in tensors:
                t.copy_(torch.where(t.abs() < HALF_MAX, t.half().float(), t))


def read_codes(model: nn.Module, codes: dict[str, LayerCode]) -> dict[str, LayerCode]:
    """The codebooks as trained now (assignments unchanged), from a model with codes attached."""
    out: dict[str, LayerCode] = {}
    for name, conv in conv_layers(model).items():
        original = conv.parametrizations["weight"].original  # type: ignore[index, union-attr]  # added at run time
        centroids = original.detach().cpu().to(torch.float32)
        codebook = torch.cat([torch.zeros(1), centroids]) if codes[name].pruned else centroids
        out[name] = LayerCode(codebook.contiguous(), codes[name].index, codes[name].pruned, codes[name].rate_penalty)
    return out
