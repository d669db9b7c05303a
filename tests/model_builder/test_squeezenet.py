"""The SqueezeNet family: paper parameter counts, torchvision compatibility, any input size."""

from __future__ import annotations

import pytest
import torch

from model_builder.squeezenet import (
    SqueezeNet,
    SqueezeNetConfig,
    count_parameters,
    squeezenet1_0,
    squeezenet1_1,
    table1,
)

# torchvision.models.squeezenet1_1().state_dict(): names and shapes, written out by hand from
# torchvision/models/squeezenet.py so that this test needs no torchvision (which we never import).
TORCHVISION_SQUEEZENET1_1: list[tuple[str, tuple[int, ...]]] = [
    ("features.0.weight", (64, 3, 3, 3)),
    ("features.0.bias", (64,)),
    ("features.3.squeeze.weight", (16, 64, 1, 1)),
    ("features.3.squeeze.bias", (16,)),
    ("features.3.expand1x1.weight", (64, 16, 1, 1)),
    ("features.3.expand1x1.bias", (64,)),
    ("features.3.expand3x3.weight", (64, 16, 3, 3)),
    ("features.3.expand3x3.bias", (64,)),
    ("features.4.squeeze.weight", (16, 128, 1, 1)),
    ("features.4.squeeze.bias", (16,)),
    ("features.4.expand1x1.weight", (64, 16, 1, 1)),
    ("features.4.expand1x1.bias", (64,)),
    ("features.4.expand3x3.weight", (64, 16, 3, 3)),
    ("features.4.expand3x3.bias", (64,)),
    ("features.6.squeeze.weight", (32, 128, 1, 1)),
    ("features.6.squeeze.bias", (32,)),
    ("features.6.expand1x1.weight", (128, 32, 1, 1)),
    ("features.6.expand1x1.bias", (128,)),
    ("features.6.expand3x3.weight", (128, 32, 3, 3)),
    ("features.6.expand3x3.bias", (128,)),
    ("features.7.squeeze.weight", (32, 256, 1, 1)),
    ("features.7.squeeze.bias", (32,)),
    ("features.7.expand1x1.weight", (128, 32, 1, 1)),
    ("features.7.expand1x1.bias", (128,)),
    ("features.7.expand3x3.weight", (128, 32, 3, 3)),
    ("features.7.expand3x3.bias", (128,)),
    ("features.9.squeeze.weight", (48, 256, 1, 1)),
    ("features.9.squeeze.bias", (48,)),
    ("features.9.expand1x1.weight", (192, 48, 1, 1)),
    ("features.9.expand1x1.bias", (192,)),
    ("features.9.expand3x3.weight", (192, 48, 3, 3)),
    ("features.9.expand3x3.bias", (192,)),
    ("features.10.squeeze.weight", (48, 384, 1, 1)),
    ("features.10.squeeze.bias", (48,)),
    ("features.10.expand1x1.weight", (192, 48, 1, 1)),
    ("features.10.expand1x1.bias", (192,)),
    ("features.10.expand3x3.weight", (192, 48, 3, 3)),
    ("features.10.expand3x3.bias", (192,)),
    ("features.11.squeeze.weight", (64, 384, 1, 1)),
    ("features.11.squeeze.bias", (64,)),
    ("features.11.expand1x1.weight", (256, 64, 1, 1)),
    ("features.11.expand1x1.bias", (256,)),
    ("features.11.expand3x3.weight", (256, 64, 3, 3)),
    ("features.11.expand3x3.bias", (256,)),
    ("features.12.squeeze.weight", (64, 512, 1, 1)),
    ("features.12.squeeze.bias", (64,)),
    ("features.12.expand1x1.weight", (256, 64, 1, 1)),
    ("features.12.expand1x1.bias", (256,)),
    ("features.12.expand3x3.weight", (256, 64, 3, 3)),
    ("features.12.expand3x3.bias", (256,)),
    ("classifier.1.weight", (1000, 512, 1, 1)),
    ("classifier.1.bias", (1000,)),
]


@pytest.mark.parametrize(
    ("arch", "bypass", "classes", "expected"),
    [
        ("squeezenet1_0", "none", 1000, 1_248_424),  # the paper's Table 1 total
        ("squeezenet1_0", "none", 10, 740_554),
        ("squeezenet1_0", "simple", 1000, 1_248_424),  # identity bypass: no parameters
        ("squeezenet1_0", "simple", 10, 740_554),
        ("squeezenet1_0", "complex", 1000, 1_589_672),  # + 1x1 convs on fire2, 4, 6, 8
        ("squeezenet1_0", "complex", 10, 1_081_802),
        ("squeezenet1_1", "none", 1000, 1_235_496),
        ("squeezenet1_1", "none", 10, 727_626),
        ("squeezenet1_1", "simple", 1000, 1_235_496),
        ("squeezenet1_1", "simple", 10, 727_626),
        ("squeezenet1_1", "complex", 1000, 1_572_648),
        ("squeezenet1_1", "complex", 10, 1_064_778),
    ],
)
def test_parameter_counts(arch: str, bypass: str, classes: int, expected: int) -> None:
    model = SqueezeNet(SqueezeNetConfig(arch=arch, bypass=bypass, num_classes=classes))
    assert count_parameters(model) == expected
    assert sum(r.params for r in table1(model.config, 224)) == expected


def test_state_dict_has_torchvision_layout() -> None:
    got = [(k, tuple(v.shape)) for k, v in squeezenet1_1().state_dict().items()]
    assert got == TORCHVISION_SQUEEZENET1_1


def test_torchvision_state_dict_loads_strictly() -> None:
    """A state_dict a user saved from torchvision loads with strict=True and is used as is."""
    g = torch.Generator().manual_seed(1)
    foreign = {k: torch.randn(shape, generator=g) for k, shape in TORCHVISION_SQUEEZENET1_1}
    model = squeezenet1_1()
    model.load_state_dict(foreign, strict=True)
    assert torch.equal(model.state_dict()["features.12.expand3x3.weight"], foreign["features.12.expand3x3.weight"])


def test_squeezenet1_0_layout_matches_torchvision_indices() -> None:
    keys = {k.split(".")[1] for k in squeezenet1_0().state_dict() if k.startswith("features.")}
    assert keys == {"0", "3", "4", "5", "7", "8", "9", "10", "12"}  # conv1, fire2-4, pool, fire5-8, pool, fire9


def test_complex_bypass_names_do_not_collide_with_torchvision() -> None:
    model = squeezenet1_1(bypass="complex")
    extra = set(model.state_dict()) - {k for k, _ in TORCHVISION_SQUEEZENET1_1}
    assert extra and all(".bypass." in k for k in extra)
    assert {k.split(".")[1] for k in extra} == {"3", "6", "9", "11"}  # fire2, fire4, fire6, fire8
    # the torchvision part still loads: only the bypass convolutions are missing
    result = model.load_state_dict(squeezenet1_1().state_dict(), strict=False)
    assert set(result.missing_keys) == extra and not result.unexpected_keys


def test_simple_bypass_adds_the_input() -> None:
    """Same weights with and without the identity bypass give different outputs: the add is really there."""
    torch.manual_seed(0)
    plain = squeezenet1_1(num_classes=10).eval()
    bypassed = squeezenet1_1(num_classes=10, bypass="simple").eval()
    bypassed.load_state_dict(plain.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(plain.features(x), bypassed.features(x))


@pytest.mark.parametrize("arch", ["squeezenet1_0", "squeezenet1_1"])
@pytest.mark.parametrize("bypass", ["none", "complex"])
@pytest.mark.parametrize("size", [64, 96, 224])
def test_forward_any_input_size(arch: str, bypass: str, size: int) -> None:
    model = SqueezeNet(SqueezeNetConfig(arch=arch, bypass=bypass, num_classes=7)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_torchvision_init_policy() -> None:
    torch.manual_seed(0)
    model = squeezenet1_1()
    final = model.classifier[1]
    assert final.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert all(float(m.bias.detach().abs().max()) == 0 for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def test_metaparameters_change_the_widths() -> None:
    rows = {r.layer: r for r in table1(SqueezeNetConfig(squeeze_ratio=0.25, pct_3x3=0.75), 224)}
    assert (rows["fire2"].s1x1, rows["fire2"].e1x1, rows["fire2"].e3x3) == (32, 32, 96)
    assert (rows["fire9"].s1x1, rows["fire9"].e1x1, rows["fire9"].e3x3) == (128, 128, 384)


def test_table1_sizes_for_squeezenet1_0() -> None:
    rows = {r.layer: r for r in table1(SqueezeNetConfig(arch="squeezenet1_0"), 224)}
    assert rows["conv1"].output == (109, 109, 96)
    assert rows["maxpool8"].output == (13, 13, 512)
    assert rows["fire2"].params == 11_920 and rows["conv10"].params == 513_000  # as printed in the paper


@pytest.mark.parametrize(
    "kwargs",
    [
        {"arch": "squeezenet2"},
        {"bypass": "weird"},
        {"pct_3x3": 0.0},
        {"squeeze_ratio": 0.0},
        {"num_classes": 0},
        {"freq": 1, "bypass": "simple"},
    ],  # freq 1 changes the width at every fire: no identity bypass fits
)
def test_invalid_configs_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SqueezeNetConfig(**kwargs)  # type: ignore[arg-type]
