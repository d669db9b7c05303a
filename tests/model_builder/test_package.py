"""package → inspect → verify, and a golden set a device can replay to the same answers."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

import artifact as A
from model_builder.cli import main
from model_builder.train import TrainResult


@pytest.fixture(scope="module")
def packaged(trained_run: TrainResult, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("pkg")
    assert main(["keygen", "--out", str(out / "keys")]) == 0
    code = main([
        "package", str(trained_run.run_dir), "--name", "shapes", "--version", "2", "--parent-version", "1",
        "--key", str(out / "keys" / "signing.key"), "--out", str(out / "shapes-v2.otam"), "--expires-days", "30",
    ])  # fmt: skip
    assert code == 0
    return out / "shapes-v2.otam", out / "keys" / "signing.pub"


def test_manifest_is_filled_from_the_run(
    packaged: tuple[Path, Path], trained_run: TrainResult, capsys: pytest.CaptureFixture[str]
) -> None:
    path, pub = packaged
    capsys.readouterr()
    assert main(["inspect", str(path), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)["manifest"]
    assert (m["model"], m["version"], m["parent_version"]) == ("shapes", 2, 1)
    assert m["metrics"]["params"] == trained_run.params
    assert m["metrics"]["accuracy"] == pytest.approx(trained_run.val_accuracy)
    assert len(m["labels"]) == 10 and m["preprocess"]["size"] == 64
    assert m["onnx"]["input"]["name"] == "input" and m["onnx"]["input"]["shape"][1:] == [3, 64, 64]
    assert m["onnx"]["output"] == {"name": "logits", "shape": [m["onnx"]["output"]["shape"][0], 10]}
    assert m["expires_at"] is not None
    assert 8 <= len(m["golden"]["cases"]) <= 16
    assert any("image" in c for c in m["golden"]["cases"]) and any("seed" in c for c in m["golden"]["cases"])
    assert main(["verify", str(path), "--pubkey", str(pub), "--model", "shapes"]) == 0


def test_golden_set_replays_on_a_device(packaged: tuple[Path, Path]) -> None:
    """What the agent will do: decode the payload, rebuild every golden input, compare answers."""
    path, pub = packaged
    verified = A.verify_artifact(
        path.read_bytes(), trust=A.TrustPolicy.of([A.load_public_key(pub)]), expected_model="shapes"
    )
    m = verified.manifest
    session = ort.InferenceSession(verified.onnx, providers=["CPUExecutionProvider"])
    for case in m.golden.cases:
        if case.image is not None:
            rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(case.image))).convert("RGB"))
            x = A.image_to_input(rgb, m.preprocess)
        else:
            x = A.golden_seed_input(case, m)
        (logits,) = session.run(None, {m.onnx.input.name: x})
        assert int(logits[0].argmax()) == case.top1
        assert np.abs(logits[0] - np.array(case.logits)).max() <= m.golden.tolerance


def test_package_refuses_bad_input(
    tmp_path: Path, trained_run: TrainResult, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["keygen", "--out", str(tmp_path / "k")])
    key = str(tmp_path / "k" / "signing.key")
    run = str(trained_run.run_dir)
    out = str(tmp_path / "x.otam")
    cases = [
        (["package", run, "--name", "Bad Name", "--version", "1", "--key", key, "--out", out], "model"),
        (["package", run, "--name", "shapes", "--version", "0", "--key", key, "--out", out], "version"),
        (["package", str(tmp_path), "--name", "shapes", "--version", "1", "--key", key, "--out", out], "checkpoint"),
        (["package", run, "--name", "shapes", "--version", "1", "--key", str(tmp_path / "nokey"), "--out", out], "key"),
    ]
    for argv, words in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err
    assert not Path(out).exists()
