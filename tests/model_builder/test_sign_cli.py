"""keygen, inspect and verify from the command line: what a publisher types, what they see."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

import artifact as A
from model_builder.cli import main
from tests.support import manifest_fields, tiny_classifier


def _artifact(tmp_path: Path, key_dir: Path) -> Path:
    key = A.load_private_key(key_dir / "signing.key")
    model = tiny_classifier()
    payload = A.encode_payload(model)
    path = tmp_path / "a.otam"
    path.write_bytes(A.seal_artifact(A.build_manifest(**manifest_fields(model, payload)), payload, [key]))
    return path


def test_keygen_writes_owner_only_private_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--out", str(tmp_path / "keys")]) == 0
    assert stat.S_IMODE((tmp_path / "keys" / "signing.key").stat().st_mode) == 0o600
    keyid = A.load_public_key(tmp_path / "keys" / "signing.pub").keyid
    assert keyid in capsys.readouterr().out
    # A second keygen must not silently replace the key devices trust.
    assert main(["keygen", "--out", str(tmp_path / "keys")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert A.load_public_key(tmp_path / "keys" / "signing.pub").keyid == keyid


def test_inspect_json_prints_manifest_and_signatures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["keygen", "--out", str(tmp_path / "k")])
    path = _artifact(tmp_path, tmp_path / "k")
    capsys.readouterr()
    assert main(["inspect", str(path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert set(shown) == {"manifest", "signatures"}
    assert shown["manifest"]["model"] == "shapes" and shown["manifest"]["version"] == 3
    assert shown["signatures"][0]["keyid"] == A.load_public_key(tmp_path / "k" / "signing.pub").keyid
    assert main(["inspect", str(path)]) == 0
    assert "shapes v3" in capsys.readouterr().out


def test_verify_accepts_only_untampered_files_signed_by_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["keygen", "--out", str(tmp_path / "k")])
    main(["keygen", "--out", str(tmp_path / "other")])
    path = _artifact(tmp_path, tmp_path / "k")
    pub, other = str(tmp_path / "k" / "signing.pub"), str(tmp_path / "other" / "signing.pub")
    capsys.readouterr()
    assert main(["verify", str(path), "--pubkey", pub]) == 0
    assert "OK: shapes v3" in capsys.readouterr().out

    assert main(["verify", str(path), "--pubkey", other]) == 2
    assert "no signature by a trusted key" in capsys.readouterr().err

    data = bytearray(path.read_bytes())
    data[-20] ^= 0x01  # one bit of the payload
    tampered = tmp_path / "t.otam"
    tampered.write_bytes(bytes(data))
    assert main(["verify", str(tampered), "--pubkey", pub]) == 2
    assert "sha256" in capsys.readouterr().err

    tampered.write_bytes(bytes(data[:-100]))
    assert main(["verify", str(tampered), "--pubkey", pub]) == 2
    assert "truncated" in capsys.readouterr().err

    assert main(["verify", str(path), "--pubkey", pub, "--threshold", "2"]) == 2
    assert "threshold" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "missing.otam"), "--pubkey", pub]) == 2
    assert "does not exist" in capsys.readouterr().err
