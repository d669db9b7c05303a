"""`model-builder trust`: the ceremony from the command line, checked the way a device checks it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

import artifact as A
from model_builder.cli import main


def keygen(tmp_path: Path, name: str) -> tuple[Path, Path]:
    assert main(["keygen", "--out", str(tmp_path / name)]) == 0
    return tmp_path / name / "signing.key", tmp_path / name / "signing.pub"


def chain(*roots: Path, keys: Path | None = None) -> A.TrustChain:
    return A.TrustChain.from_json(
        {
            "roots": [json.loads(r.read_bytes()) for r in roots],
            "keys": None if keys is None else json.loads(keys.read_bytes()),
        }
    )


def test_init_keys_rotate_and_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r1, _ = keygen(tmp_path, "root1")
    r2, _ = keygen(tmp_path, "root2")
    r3, _ = keygen(tmp_path, "root3")
    _, p1 = keygen(tmp_path, "pub1")
    _, p2 = keygen(tmp_path, "pub2")
    root1, keys1, root2, keys2 = (tmp_path / n for n in ("root1.json", "keys1.json", "root2.json", "keys2.json"))

    assert (
        main(["trust", "init", "--root-key", str(r1), "--root-key", str(r2), "--threshold", "2", "--out", str(root1)])
        == 0
    )
    common = ["--publisher", str(p1), "--version", "1", "--out", str(keys1)]
    assert main(["trust", "keys", "--root", str(root1), "--root-key", str(r1), *common]) == 2
    assert "1 valid signature(s)" in capsys.readouterr().err  # threshold 2: one root key is not enough
    assert main(["trust", "keys", "--root", str(root1), "--root-key", str(r1), "--root-key", str(r2), *common]) == 0

    rotate = ["trust", "rotate", "--root", str(root1), "--new-root-key", str(r3), "--out", str(root2)]
    assert main([*rotate, "--old-root-key", str(r1)]) == 2  # the old threshold is 2
    assert "threshold of root v1" in capsys.readouterr().err
    assert main([*rotate, "--old-root-key", str(r1), "--old-root-key", str(r2)]) == 0
    revoke = ["--publisher", str(p2), "--revoke", str(p1), "--version", "2", "--out", str(keys2)]
    assert main(["trust", "keys", "--root", str(root2), "--root-key", str(r3), *revoke]) == 0

    device = A.TrustState.from_root(root1.read_bytes()).update(chain(root1, keys=keys1), now=datetime.now(UTC))
    device = device.update(chain(root1, root2, keys=keys2), now=datetime.now(UTC))
    policy = device.policy()
    assert device.tag == "r2-k2" and policy is not None
    assert set(policy.keys) == {A.load_public_key(p2).keyid} and policy.revoked == {A.load_public_key(p1).keyid}


def test_bad_inputs_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r1, p = keygen(tmp_path, "root1")
    out = str(tmp_path / "root.json")
    assert main(["trust", "init", "--root-key", str(p), "--out", out]) == 2  # a public key where a private one goes
    assert main(["trust", "init", "--root-key", str(r1), "--threshold", "2", "--out", out]) == 2
    assert main(["trust", "init", "--root-key", str(r1), "--expires", "0", "--out", out]) == 2
    assert main(["trust", "keys", "--root", str(tmp_path / "nope.json"), "--root-key", str(r1), "--publisher", str(p),
                 "--version", "1", "--out", out]) == 2  # fmt: skip
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 4 and all(line.startswith("model-builder: error: ") for line in errors), errors
    assert not (tmp_path / "root.json").exists()


@pytest.mark.parametrize("days", ["nan", "inf", "1e9"])
def test_an_expiry_past_any_date_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], days: str
) -> None:
    r1, _ = keygen(tmp_path, "root1")
    capsys.readouterr()
    assert main(["trust", "init", "--root-key", str(r1), "--expires", days, "--out", str(tmp_path / "root.json")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == [
        f"model-builder: error: --expires must be a number of days above 0 and at most 36525, got {float(days)}"
    ]
    assert not (tmp_path / "root.json").exists()
