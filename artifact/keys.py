"""Ed25519 publisher keys: generate, store as PEM, load, identify, sign.

Keys are plain PEM so that standard tools interoperate: the private key is PKCS#8 (written with
mode 0600), the public key SubjectPublicKeyInfo; `openssl pkey` reads both and
`openssl pkeyutl -verify -rawin` checks our signatures. A key's id is the hex sha256 of its raw
32-byte public key, which is what signatures name.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .atomic import write_atomic
from .errors import KeyFileError

__all__ = [
    "Signature",
    "SigningKey",
    "VerifyKey",
    "generate_key",
    "key_id",
    "load_private_key",
    "load_public_key",
    "save_private_key",
    "save_public_key",
]


def key_id(public_key: Ed25519PublicKey) -> str:
    """Hex sha256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class Signature:
    """One entry of an artifact's signature list: `{"keyid": ..., "sig": base64}`."""

    keyid: str
    sig: str

    def to_dict(self) -> dict[str, str]:
        return {"keyid": self.keyid, "sig": self.sig}

    @classmethod
    def from_dict(cls, value: Any) -> Signature:
        if (
            not isinstance(value, dict)
            or set(value) != {"keyid", "sig"}
            or not all(isinstance(value[k], str) for k in ("keyid", "sig"))
        ):
            raise ValueError('a signature must be an object {"keyid": str, "sig": str}')
        return cls(keyid=value["keyid"], sig=value["sig"])


@dataclass(frozen=True)
class VerifyKey:
    """A trusted public key and its id."""

    public_key: Ed25519PublicKey

    @property
    def keyid(self) -> str:
        return key_id(self.public_key)

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            self.public_key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def to_pem(self) -> bytes:
        return self.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class SigningKey:
    """A publisher's private key."""

    private_key: Ed25519PrivateKey

    @property
    def verify_key(self) -> VerifyKey:
        return VerifyKey(self.private_key.public_key())

    @property
    def keyid(self) -> str:
        return self.verify_key.keyid

    def sign(self, message: bytes) -> Signature:
        raw = self.private_key.sign(message)
        return Signature(keyid=self.keyid, sig=base64.b64encode(raw).decode("ascii"))

    def to_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def generate_key() -> SigningKey:
    return SigningKey(Ed25519PrivateKey.generate())


def save_private_key(key: SigningKey, path: str | os.PathLike[str]) -> None:
    """Write the private key as PKCS#8 PEM, readable by its owner only (0600)."""
    write_atomic(path, key.to_pem(), mode=0o600)


def save_public_key(key: SigningKey | VerifyKey, path: str | os.PathLike[str]) -> None:
    vk = key.verify_key if isinstance(key, SigningKey) else key
    write_atomic(path, vk.to_pem(), mode=0o644)


def _read(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read key file {os.fspath(path)}: {e.strerror}") from e


def load_private_key(path: str | os.PathLike[str]) -> SigningKey:
    data = _read(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise KeyFileError(f"{os.fspath(path)} is not an unencrypted PEM private key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{os.fspath(path)} holds a {type(key).__name__}, not an Ed25519 key")
    return SigningKey(key)


def load_public_key(path: str | os.PathLike[str]) -> VerifyKey:
    data = _read(path)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise KeyFileError(f"{os.fspath(path)} is not a PEM public key: {e}") from e
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{os.fspath(path)} holds a {type(key).__name__}, not an Ed25519 key")
    return VerifyKey(key)
