"""The SqueezeNet family, built from the paper's metaparameters.

Iandola et al., "SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and <0.5MB model size"
(2016). A network is eight Fire modules (fire2 … fire9) between a stem convolution (conv1) and a
1×1 classifier convolution (conv10) with global average pooling. Fire module *i* (0-based) expands
to ``e_i = base_e + incr_e * floor(i / freq)`` channels, ``pct_3x3`` of them 3×3, and squeezes to
``squeeze_ratio * e_i`` channels first. The defaults (128, 128, 0.5, 2, 0.125) give the paper's
Table 1 network.

Parameter names and shapes are torchvision's (``features.N.squeeze.weight``,
``features.N.expand1x1.weight``, ``features.N.expand3x3.weight``, ``classifier.1.weight`` …), so a
torchvision ``state_dict`` a user already has on disk loads with ``strict=True`` when the bypass is
``none``. The bypass convolutions of the ``complex`` variant live at ``features.N.bypass.*``, a name
torchvision never uses, so they never collide with a pretrained checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
from torch import nn

Arch = Literal["squeezenet1_0", "squeezenet1_1"]
Bypass = Literal["none", "simple", "complex"]
ARCHS: tuple[str, ...] = ("squeezenet1_0", "squeezenet1_1")
BYPASSES: tuple[str, ...] = ("none", "simple", "complex")

# Per arch: (conv1 out channels, kernel, stride) and the fire indices (0 = fire2) followed by a max-pool.
_STEM: dict[str, tuple[int, int, int]] = {"squeezenet1_0": (96, 7, 2), "squeezenet1_1": (64, 3, 2)}
_POOL_AFTER: dict[str, tuple[int, ...]] = {"squeezenet1_0": (2, 6), "squeezenet1_1": (1, 3)}
# The paper's simple bypass wraps fire3, 5, 7 and 9 (0-based 1, 3, 5, 7): where in and out widths agree.
_SIMPLE_BYPASS_AT: tuple[int, ...] = (1, 3, 5, 7)
NUM_FIRES = 8


@dataclass(frozen=True)
class FireSpec:
    """The widths of one Fire module: what Table 1 calls s1x1, e1x1 and e3x3."""

    inplanes: int
    squeeze: int
    expand1x1: int
    expand3x3: int
    bypass: Literal["none", "identity", "conv"]

    @property
    def outplanes(self) -> int:
        return self.expand1x1 + self.expand3x3


@dataclass(frozen=True)
class SqueezeNetConfig:
    """Everything that rebuilds a model: stored in checkpoints, swept by design-space exploration."""

    arch: str = "squeezenet1_1"
    base_e: int = 128
    incr_e: int = 128
    pct_3x3: float = 0.5
    freq: int = 2
    squeeze_ratio: float = 0.125
    bypass: str = "none"
    num_classes: int = 1000
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; expected one of {', '.join(ARCHS)}")
        if self.bypass not in BYPASSES:
            raise ValueError(f"unknown bypass {self.bypass!r}; expected one of {', '.join(BYPASSES)}")
        if self.base_e < 2 or self.incr_e < 0 or self.freq < 1:
            raise ValueError("base_e must be >= 2, incr_e >= 0 and freq >= 1")
        if not 0.0 < self.pct_3x3 < 1.0:
            raise ValueError(f"pct_3x3 must lie strictly between 0 and 1, got {self.pct_3x3}")
        if not 0.0 < self.squeeze_ratio <= 1.0:
            raise ValueError(f"squeeze_ratio must lie in (0, 1], got {self.squeeze_ratio}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        self.fire_specs()  # raises if this bypass does not fit these widths

    def fire_specs(self) -> list[FireSpec]:
        """Widths of fire2 … fire9 from the metaparameters (paper section 4 / Figure 3)."""
        specs: list[FireSpec] = []
        inplanes = _STEM[self.arch][0]
        for i in range(NUM_FIRES):
            e = self.base_e + self.incr_e * (i // self.freq)
            e3 = round(e * self.pct_3x3)
            e1 = e - e3
            s = max(1, round(e * self.squeeze_ratio))
            if e1 < 1 or e3 < 1:
                raise ValueError(f"pct_3x3={self.pct_3x3} leaves fire{i + 2} with an empty expand branch")
            bypass: Literal["none", "identity", "conv"] = "none"
            if self.bypass != "none" and inplanes == e:
                bypass = "identity" if self.bypass == "complex" or i in _SIMPLE_BYPASS_AT else "none"
            elif self.bypass == "complex":
                bypass = "conv"
            if self.bypass == "simple" and i in _SIMPLE_BYPASS_AT and bypass != "identity":
                raise ValueError(
                    f"simple bypass needs fire{i + 2} to keep its width ({inplanes} in, {e} out); "
                    "use bypass complex for these metaparameters"
                )
            specs.append(FireSpec(inplanes, s, e1, e3, bypass))
            inplanes = e
        return specs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SqueezeNetConfig:
        """Rebuild from a checkpoint; unknown keys are an error so a newer format is not misread."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        return cls(**data)


class Fire(nn.Module):
    """squeeze 1×1 → ReLU → (expand 1×1 ‖ expand 3×3, padding 1) → ReLU → concat [→ + bypass]."""

    def __init__(self, spec: FireSpec) -> None:
        super().__init__()
        self.inplanes = spec.inplanes
        self.squeeze = nn.Conv2d(spec.inplanes, spec.squeeze, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(spec.squeeze, spec.expand1x1, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(spec.squeeze, spec.expand3x3, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)
        self.bypass_kind = spec.bypass
        # Paper Fig. 2 (right): a 1×1 convolution carries the input where the widths differ.
        self.bypass = nn.Conv2d(spec.inplanes, spec.outplanes, kernel_size=1) if spec.bypass == "conv" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze_activation(self.squeeze(x))  # (N, s1x1, H, W)
        out = torch.cat(
            [self.expand1x1_activation(self.expand1x1(s)), self.expand3x3_activation(self.expand3x3(s))], 1
        )  # (N, e1x1 + e3x3, H, W)
        if self.bypass is not None:
            out = out + self.bypass(x)  # (N, e1x1 + e3x3, H, W)
        elif self.bypass_kind == "identity":
            out = out + x  # (N, e1x1 + e3x3, H, W): in and out widths are equal here
        return out


def _pool() -> nn.MaxPool2d:
    # ceil_mode as in torchvision, so odd feature maps keep their last row and column.
    return nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)


class SqueezeNet(nn.Module):
    """conv1 → pool → fire2…fire9 (with pools) → dropout → conv10 → ReLU → global average pool."""

    def __init__(self, config: SqueezeNetConfig) -> None:
        super().__init__()
        self.config = config
        stem_out, k, stride = _STEM[config.arch]
        layers: list[nn.Module] = [nn.Conv2d(3, stem_out, kernel_size=k, stride=stride), nn.ReLU(inplace=True), _pool()]
        specs = config.fire_specs()
        for i, spec in enumerate(specs):
            layers.append(Fire(spec))
            if i in _POOL_AFTER[config.arch]:
                layers.append(_pool())
        self.features = nn.Sequential(*layers)
        final_conv = nn.Conv2d(specs[-1].outplanes, config.num_classes, kernel_size=1)
        self.classifier = nn.Sequential(
            nn.Dropout(p=config.dropout), final_conv, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1))
        )
        # torchvision's policy: a near-zero classifier start keeps the final ReLU from saturating.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is final_conv:
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, 512, H/16-ish, W/16-ish)
        x = self.classifier(x)  # (N, num_classes, 1, 1)
        return torch.flatten(x, 1)  # (N, num_classes)


def squeezenet1_0(num_classes: int = 1000, bypass: str = "none", dropout: float = 0.5) -> SqueezeNet:
    """The paper's Table 1 network: 1,248,424 parameters at 1000 classes."""
    return SqueezeNet(SqueezeNetConfig("squeezenet1_0", bypass=bypass, num_classes=num_classes, dropout=dropout))


def squeezenet1_1(num_classes: int = 1000, bypass: str = "none", dropout: float = 0.5) -> SqueezeNet:
    """SqueezeNet v1.1: a 3×3 stem and earlier pools, 2.4× less compute at the same accuracy."""
    return SqueezeNet(SqueezeNetConfig("squeezenet1_1", bypass=bypass, num_classes=num_classes, dropout=dropout))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class LayerRow:
    """One row of the paper's Table 1: output size as (H, W, C) and the layer's own parameters."""

    layer: str
    output: tuple[int, int, int]
    filter: str
    s1x1: int | None
    e1x1: int | None
    e3x3: int | None
    bypass: str
    params: int


def table1(config: SqueezeNetConfig, image_size: int = 224) -> list[LayerRow]:
    """The paper's Table 1 for ``config`` at ``image_size``, with sizes measured by a real forward pass.

    The forward runs on the ``meta`` device: shapes propagate exactly, no memory or compute is spent.
    """
    if image_size < 32:
        raise ValueError(f"image size {image_size} is too small: the stem and three pools need >= 32 px")
    with torch.device("meta"):
        model = SqueezeNet(config)
    shapes: dict[int, tuple[int, int, int]] = {}

    def record(m: nn.Module, _inputs: object, out: torch.Tensor) -> None:
        c, h, w = out.shape[1:]
        shapes[id(m)] = (c, h, w)

    hooks = [m.register_forward_hook(record) for m in [*model.features, *model.classifier]]
    with torch.no_grad():
        model(torch.empty(1, 3, image_size, image_size, device="meta"))
    for h in hooks:
        h.remove()

    def hwc(m: nn.Module) -> tuple[int, int, int]:
        c, h, w = shapes[id(m)]
        return (h, w, c)

    def own_params(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    rows: list[LayerRow] = []
    conv1 = model.features[0]
    assert isinstance(conv1, nn.Conv2d)
    k, s = conv1.kernel_size[0], conv1.stride[0]
    rows.append(
        LayerRow("conv1", hwc(conv1), f"{k}x{k}/{s} (x{conv1.out_channels})", None, None, None, "", own_params(conv1))
    )
    last = "1"
    fire_no = 1
    for m in list(model.features)[2:]:
        if isinstance(m, nn.MaxPool2d):
            rows.append(LayerRow(f"maxpool{last}", hwc(m), "3x3/2", None, None, None, "", 0))
        elif isinstance(m, Fire):
            fire_no += 1
            last = str(fire_no)
            kind = {"none": "", "identity": "identity", "conv": "1x1 conv"}[m.bypass_kind]
            rows.append(
                LayerRow(
                    f"fire{fire_no}",
                    hwc(m),
                    "",
                    m.squeeze.out_channels,
                    m.expand1x1.out_channels,
                    m.expand3x3.out_channels,
                    kind,
                    own_params(m),
                )
            )
    conv10 = model.classifier[1]
    rows.append(
        LayerRow(
            "conv10",
            hwc(model.classifier[2]),
            f"1x1/1 (x{config.num_classes})",
            None,
            None,
            None,
            "",
            own_params(conv10),
        )
    )
    rows.append(
        LayerRow(
            "avgpool10",
            hwc(model.classifier[3]),
            f"{hwc(model.classifier[2])[0]}x{hwc(model.classifier[2])[1]}/1",
            None,
            None,
            None,
            "",
            0,
        )
    )
    total = sum(r.params for r in rows)
    if total != count_parameters(model):  # every parameter belongs to exactly one row
        raise AssertionError(f"Table 1 rows sum to {total}, the model has {count_parameters(model)}")
    return rows
