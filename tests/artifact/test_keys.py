"""Ed25519 keys: PEM files standard tools read, owner-only private keys, interoperable signatures."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

import artifact as A


def test_pem_round_trip_and_private_mode(tmp_path: Path) -> None:
    key = A.generate_key()
    A.save_private_key(key, tmp_path / "signing.key")
    A.save_public_key(key, tmp_path / "signing.pub")
    assert stat.S_IMODE((tmp_path / "signing.key").stat().st_mode) == 0o600
    assert A.load_private_key(tmp_path / "signing.key").keyid == key.keyid
    assert A.load_public_key(tmp_path / "signing.pub").keyid == key.keyid
    assert (tmp_path / "signing.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert (tmp_path / "signing.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")


def test_keyid_is_sha256_of_raw_public_key() -> None:
    from cryptography.hazmat.primitives import serialization

    key = A.generate_key()
    raw = key.private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert len(raw) == 32
    assert key.keyid == hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "cannot read"),
        (b"not a key", "PEM"),
    ],
)
def test_bad_key_files(tmp_path: Path, content: bytes | None, match: str) -> None:
    path = tmp_path / "k.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(A.KeyFileError, match=match):
        A.load_private_key(path)
    with pytest.raises(A.KeyFileError, match=match):
        A.load_public_key(path)


def test_rsa_key_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "rsa.key").write_bytes(pem)
    with pytest.raises(A.KeyFileError, match="not an Ed25519"):
        A.load_private_key(tmp_path / "rsa.key")


def require_openssl() -> None:
    """openssl is part of the machine: skip without it here, fail without it under `CI=true`."""
    if shutil.which("openssl") is not None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("openssl is not on PATH — CI requires it for the interop check", pytrace=False)
    pytest.skip("openssl is not on PATH")


def test_openssl_reads_keys_and_verifies_signatures(tmp_path: Path) -> None:
    require_openssl()
    key = A.generate_key()
    A.save_private_key(key, tmp_path / "signing.key")
    A.save_public_key(key, tmp_path / "signing.pub")
    for args in (["-in", "signing.key", "-noout"], ["-pubin", "-in", "signing.pub", "-noout"]):
        subprocess.run(["openssl", "pkey", *args], cwd=tmp_path, check=True, capture_output=True)

    message = b'{"model":"shapes","version":1}'
    (tmp_path / "msg").write_bytes(message)
    (tmp_path / "sig").write_bytes(base64.b64decode(key.sign(message).sig))
    verify = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", "signing.pub", "-rawin", "-in", "msg"]
    ok = subprocess.run([*verify, "-sigfile", "sig"], cwd=tmp_path, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr

    (tmp_path / "msg").write_bytes(message.replace(b"1", b"2"))
    bad = subprocess.run([*verify, "-sigfile", "sig"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode != 0

    # And the other way: a signature openssl makes verifies with our key.
    (tmp_path / "msg").write_bytes(message)
    subprocess.run(
        ["openssl", "pkeyutl", "-sign", "-inkey", "signing.key", "-rawin", "-in", "msg", "-out", "osig"],
        cwd=tmp_path,
        check=True,
    )
    assert key.verify_key.verify((tmp_path / "osig").read_bytes(), message)


def test_a_missing_openssl_fails_under_ci_and_only_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI requires it"):
        require_openssl()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="not on PATH"):
        require_openssl()
