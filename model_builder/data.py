"""Image-folder datasets, batch augmentation and the synthetic shapes dataset.

Layout: one sub-folder per class holding JPEG/PNG files. A folder that holds ``train/`` and ``val/``
(what ``make-dataset`` writes) is read as that split; otherwise a separate validation folder is
given, or a deterministic, per-class split is drawn from a seed.

Images are decoded once, resized (shorter side to the model size, centre crop) and kept in memory as
one uint8 tensor: decoding is where corrupt files show up, so they are counted and skipped up front
rather than failing mid-epoch, and on a 2-core laptop re-decoding every epoch would cost more than
the network. Memory is ``N × size² × 3`` bytes (3,000 images at 64 px: 37 MB). Augmentation then
runs on whole batches in torch (one ``grid_sample`` per batch for crop, scale and flip), which is
much cheaper than per-image PIL work.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, UnidentifiedImageError
from tqdm import tqdm  # type: ignore[import-untyped]

from model_builder.errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
# ImageNet statistics: what torchvision's pretrained SqueezeNets expect, so fine-tuning from them works.
MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class DataWarning(UserWarning):
    """Something was skipped (an unreadable image); training goes on without it."""


@dataclass
class ImageSet:
    """Decoded images of one split: ``images`` is (N, 3, S, S) uint8, ``targets`` (N,) int64."""

    images: torch.Tensor
    targets: torch.Tensor
    labels: list[str]
    paths: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: torch.Tensor) -> ImageSet:
        idx = index.tolist()
        return ImageSet(self.images[index], self.targets[index], self.labels, [self.paths[i] for i in idx])


def preprocess_image(image: Image.Image, size: int) -> np.ndarray:
    """RGB, shorter side resized to ``size``, centre-cropped: (size, size, 3) uint8.

    The agent's ``device_agent.images.rgb_array`` must give the same bits (it cannot import this);
    ``tests/e2e/test_resize_rule.py`` checks that they do.
    """
    image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def normalize(images: torch.Tensor, mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD) -> torch.Tensor:
    """uint8 or [0, 1] float (N, 3, H, W) → the float32 input the model and the exported ONNX expect."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s  # (N, 3, H, W)


def _class_dirs(root: Path) -> list[Path]:
    if not root.exists():
        raise DataError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data path {root} is not a folder")
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise DataError(f"data folder {root} is empty: expected one sub-folder of images per class")
    return dirs


def load_image_folder(root: str | Path, size: int, labels: list[str] | None = None) -> ImageSet:
    """Decode every JPEG/PNG under ``root/<class>/``; unreadable files are skipped and counted.

    ``labels`` (the training classes) makes a validation folder use the same target numbering.
    """
    root = Path(root)
    dirs = _class_dirs(root)
    names = [d.name for d in dirs]
    if labels is None:
        if len(dirs) < 2:
            raise DataError(f"data folder {root} has a single class ({dirs[0].name}): need at least two")
        labels = names
    else:
        unknown = sorted(set(names) - set(labels))
        if unknown:
            raise DataError(f"validation folder {root} has classes the training data lacks: {', '.join(unknown)}")
    arrays: list[np.ndarray] = []
    targets: list[int] = []
    paths: list[str] = []
    skipped: list[tuple[str, str]] = []
    for d in dirs:
        files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        found = 0
        for p in files:
            try:
                with Image.open(p) as im:
                    arrays.append(preprocess_image(im, size))
            except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
                # what PIL raises on bad bytes, truncated files and absurd dimensions
                skipped.append((str(p), str(e) or type(e).__name__))
                continue
            targets.append(labels.index(d.name))
            paths.append(str(p))
            found += 1
        if found == 0:
            raise DataError(f"class folder {d} holds no readable JPEG/PNG images")
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} unreadable image(s) under {root}, e.g. {skipped[0][0]}: {skipped[0][1]}",
            DataWarning,
            stacklevel=2,
        )
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S) uint8
    return ImageSet(images, torch.tensor(targets, dtype=torch.int64), list(labels), paths, skipped)


def split(data: ImageSet, val_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Per-class deterministic split: the same seed and files always give the same validation set."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"validation fraction must lie in (0, 1), got {val_fraction}")
    g = torch.Generator().manual_seed(seed)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for c in range(len(data.labels)):
        members = torch.nonzero(data.targets == c).flatten()
        idx: list[int] = members[torch.randperm(len(members), generator=g)].tolist()
        if len(idx) < 2:
            raise DataError(f"class {data.labels[c]!r} has {len(idx)} image(s): a split needs at least two")
        n_val = min(len(idx) - 1, max(1, round(len(idx) * val_fraction)))
        val_idx += idx[:n_val]
        train_idx += idx[n_val:]
    train, val = data.subset(torch.tensor(sorted(train_idx))), data.subset(torch.tensor(sorted(val_idx)))
    train.skipped = data.skipped
    return train, val


def load_datasets(
    data: str | Path, size: int, val: str | Path | None = None, val_fraction: float = 0.2, seed: int = 0
) -> tuple[ImageSet, ImageSet]:
    """Train and validation sets from ``data`` (and ``val``) following the layout rules above."""
    root = Path(data)
    if val is None and (root / "train").is_dir() and (root / "val").is_dir():
        root, val = root / "train", root / "val"
    train = load_image_folder(root, size)
    if val is None:
        return split(train, val_fraction, seed)
    return train, load_image_folder(val, size, labels=train.labels)


def augment(
    images: torch.Tensor, generator: torch.Generator, scale: tuple[float, float] = (0.85, 1.0), jitter: float = 0.1
) -> torch.Tensor:
    """Random resized crop, horizontal flip and small colour jitter on a uint8 (N, 3, S, S) batch.

    Returns floats in [0, 1] of the same size; all randomness comes from ``generator`` (determinism).
    """
    n, _, s, _ = images.shape
    x = images.float() / 255.0  # (N, 3, S, S)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    area = uniform(*scale)
    ratio = torch.exp(uniform(np.log(3 / 4), np.log(4 / 3)))
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width as a fraction of the image
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (1 - w) * uniform(-1.0, 1.0)
    cy = (1 - h) * uniform(-1.0, 1.0)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * flip, cx, h, cy
    grid = F.affine_grid(theta, [n, 3, s, s], align_corners=False)  # (N, S, S, 2)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)  # (N, 3, S, S)
    if jitter > 0:
        gray = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)  # (N, 1, S, S)
        sat = uniform(1 - jitter, 1 + jitter).view(n, 1, 1, 1)
        x = gray + (x - gray) * sat
        con = uniform(1 - jitter, 1 + jitter).view(n, 1, 1, 1)
        mean = gray.mean(dim=(2, 3), keepdim=True)  # (N, 1, 1, 1)
        x = mean + (x - mean) * con
        x = x * uniform(1 - jitter, 1 + jitter).view(n, 1, 1, 1)
    return x.clamp(0.0, 1.0)


def batches(
    data: ImageSet, batch_size: int, generator: torch.Generator | None = None, train: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised (B, 3, S, S) float batches and targets; shuffled and augmented when ``train``."""
    order = torch.randperm(len(data), generator=generator) if train else torch.arange(len(data))
    for start in range(0, len(data), batch_size):
        idx = order[start : start + batch_size]
        x = data.images[idx]
        x = augment(x, generator) if train and generator is not None else x
        yield normalize(x), data.targets[idx]


# --- the synthetic shapes dataset ---------------------------------------------------------------

SHAPES: tuple[str, ...] = (
    "arrow",
    "circle",
    "crescent",
    "cross",
    "ellipse",
    "hexagon",
    "ring",
    "square",
    "star",
    "triangle",
)
_SUPERSAMPLE = 4  # draw at 4× and downsample: anti-aliased edges without a rasteriser of our own


def _polygon(kind: str, rng: np.random.Generator) -> list[np.ndarray]:
    """Unit-radius outline(s) of ``kind`` centred at 0; the first is filled, any further ones are holes."""
    t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    circle = np.stack([np.cos(t), np.sin(t)], 1)
    if kind == "circle":
        return [circle]
    if kind == "ellipse":
        return [circle * [1.0, rng.uniform(0.42, 0.62)]]
    if kind == "ring":
        return [circle, circle * rng.uniform(0.48, 0.62)]
    if kind == "crescent":
        return [circle, circle * rng.uniform(0.8, 0.92) + [rng.uniform(0.35, 0.5), 0.0]]
    if kind in ("triangle", "square", "hexagon"):
        k = {"triangle": 3, "square": 4, "hexagon": 6}[kind]
        a = np.arange(k) * 2 * np.pi / k
        return [np.stack([np.cos(a), np.sin(a)], 1)]
    if kind == "star":
        a = np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.48))
        return [np.stack([r * np.cos(a), r * np.sin(a)], 1)]
    if kind == "cross":
        w = rng.uniform(0.3, 0.4)
        return [
            np.array(
                [
                    [w, w],
                    [1, w],
                    [1, -w],
                    [w, -w],
                    [w, -1],
                    [-w, -1],
                    [-w, -w],
                    [-1, -w],
                    [-1, w],
                    [-w, w],
                    [-w, 1],
                    [w, 1],
                ]
            )
        ]
    if kind == "arrow":
        sw, hw, hl = rng.uniform(0.18, 0.26), rng.uniform(0.55, 0.7), rng.uniform(0.45, 0.6)
        x0 = 1 - 2 * hl
        return [np.array([[-1, -sw], [x0, -sw], [x0, -hw], [1, 0], [x0, hw], [x0, sw], [-1, sw]])]
    raise ValueError(f"unknown shape {kind!r}")


def _luma(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def render_shape(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One image: a random-colour ``kind`` at a random place, size and angle on a cluttered background."""
    big = size * _SUPERSAMPLE
    # Background: a two-colour linear gradient at a random angle.
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    ramp = ((xx - 0.5) * np.cos(ang) + (yy - 0.5) * np.sin(ang) + 0.71) / 1.42
    bg = c0 + (c1 - c0) * ramp[..., None]  # (size, size, 3)
    canvas = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8)).resize((big, big), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(canvas)
    # Clutter: thin lines and small blobs, too small to pass for the shape itself.
    for _ in range(rng.integers(2, 6)):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.6:
            pts = rng.uniform(0, big, 4)
            draw.line([(pts[0], pts[1]), (pts[2], pts[3])], fill=colour, width=int(rng.integers(2, 1 + _SUPERSAMPLE)))
        else:
            cx, cy, r = rng.uniform(0, big), rng.uniform(0, big), rng.uniform(0.02, 0.06) * big
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    # The shape: a mask drawn at 4× so that downsampling anti-aliases it.
    radius = rng.uniform(0.26, 0.42) * big
    centre = rng.uniform(radius * 0.85, big - radius * 0.85, 2)
    rot = rng.uniform(0, 2 * np.pi)
    rmat = np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]])
    mask = Image.new("L", (big, big), 0)
    mdraw = ImageDraw.Draw(mask)
    for i, outline in enumerate(_polygon(kind, rng)):
        pts = outline @ rmat.T * radius + centre
        mdraw.polygon([(float(x), float(y)) for x, y in pts], fill=0 if i else 255)
    local = np.asarray(canvas, dtype=np.float64).reshape(-1, 3).mean(0)
    fg = rng.uniform(0, 255, 3)
    while abs(_luma(fg) - _luma(local)) < 70:  # keep the shape visible against its background
        fg = rng.uniform(0, 255, 3)
    canvas.paste(tuple(int(v) for v in fg), mask=mask)
    img = np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float64)
    img = img + rng.normal(0, 6.0, img.shape)  # sensor-like noise
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8))


_CHUNK = 50  # images per task when the data set is drawn on several cores


@dataclass(frozen=True)
class _Chunk:
    folder: Path
    kind: str
    size: int
    key: tuple[int, int, int]  # (seed, split, class): with the index, the image's own generator
    start: int
    count: int


def _render_chunk(chunk: _Chunk) -> int:
    for i in range(chunk.start, chunk.start + chunk.count):
        rng = np.random.default_rng([*chunk.key, i])
        render_shape(chunk.kind, chunk.size, rng).save(chunk.folder / f"{i:05d}.png", optimize=False)
    return chunk.count


def make_shapes_dataset(
    out: str | Path,
    per_class: int = 500,
    size: int = 64,
    seed: int = 0,
    val_per_class: int | None = None,
    progress: bool = False,
    workers: int | None = None,
) -> dict[str, int]:
    """Write ``out/{train,val}/<shape>/NNNNN.png``; the same arguments always give the same bytes.

    Each image draws from its own generator seeded by (seed, split, class, index), so images do not
    depend on the order they are written, on how many others there are, or on how many processes
    (``workers``; default one per core for 200 images or more) draw them. Returns image counts.
    """
    if per_class < 1 or size < 16:
        raise DataError(f"need per_class >= 1 and size >= 16, got per_class={per_class}, size={size}")
    n_val = max(1, per_class // 5) if val_per_class is None else val_per_class
    out = Path(out)
    counts = {"train": 0, "val": 0}
    chunks: list[_Chunk] = []
    for split_id, (split_name, n) in enumerate((("train", per_class), ("val", n_val))):
        for class_id, kind in enumerate(SHAPES):
            folder = out / split_name / kind
            folder.mkdir(parents=True, exist_ok=True)
            counts[split_name] += n
            for start in range(0, n, _CHUNK):
                chunks.append(_Chunk(folder, kind, size, (seed, split_id, class_id), start, min(_CHUNK, n - start)))
    bar = tqdm(total=sum(counts.values()), unit="img", file=sys.stderr, disable=not progress)
    if workers is None:  # one process per core once there is enough to draw (43 s for the demo's 6,000 on one)
        workers = min(os.cpu_count() or 1, 8) if sum(counts.values()) >= 200 else 1
    workers = max(1, min(workers, len(chunks)))
    if workers > 1:  # every image has its own seed: the same bytes either way
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            for done in pool.map(_render_chunk, chunks):
                bar.update(done)
    else:
        for chunk in chunks:
            bar.update(_render_chunk(chunk))
    bar.close()
    return counts
