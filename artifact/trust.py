"""A root of trust and publisher key rotation: TUF's root role, in the small.

Devices trust a *root* key set; the root signs a versioned, expiring *keys* document naming the
publisher keys (and their threshold) whose signatures artifacts need, and the keys it revoked.
Both documents are canonical JSON envelopes (python-tuf's metadata shape)::

    {"signed": {"type": "root", "version": 2, "expires": "2027-12-01T00:00:00Z",
                "keys": {"<keyid>": {"keytype": "ed25519", "public": "<base64 raw key>"}}, "threshold": 1},
     "signatures": [{"keyid": "<keyid>", "sig": "<base64 Ed25519 over canonical_json(signed)>"}]}

    {"signed": {"type": "keys", "version": 7, "expires": "…", "keys": {…}, "threshold": 1,
                "revoked": ["<keyid>", …]}, "signatures": […]}

:meth:`TrustState.update` is the one verifier, pure (the clock is passed in, no I/O): root N+1 must
be signed by root N's threshold *and* its own; versions are never skipped and never go back; the
keys document must be signed by the current root's threshold, never go back, never be replayed with
other content at the same version, and not be expired. Any refusal raises a
:class:`~artifact.errors.TrustError` subclass and leaves the state as it was (states are immutable).
:meth:`TrustState.policy` turns the result into the :class:`~artifact.verify.TrustPolicy` the one
door checks artifacts with. Every size and count read is bounded.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from .errors import (
    ManifestError,
    SignatureError,
    TrustExpiredError,
    TrustFormatError,
    TrustRollbackError,
    TrustSignatureError,
    TrustSkippedVersionError,
)
from .keys import Signature, SigningKey, VerifyKey
from .manifest import MAX_VERSION, SHA256_HEX_PATTERN, canonical_json, format_time, parse_time
from .verify import TrustPolicy, _check_signatures

MAX_TRUST_DOCUMENT_BYTES = 64 * 1024  # one root or keys document
MAX_TRUST_KEYS = 32  # keys one document names (root keys, or publisher keys)
MAX_REVOKED_KEYS = 1024
MAX_CHAIN_ROOTS = 64  # root documents one chain may carry (one per rotation, ever)

KeyId = Annotated[str, StringConstraints(pattern=SHA256_HEX_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class TrustKey(_Strict):
    """An Ed25519 public key: base64 of its raw 32 bytes; its id is their sha256."""

    keytype: Literal["ed25519"]
    public: str = Field(max_length=64)

    def verify_key(self) -> VerifyKey:
        try:
            raw = base64.b64decode(self.public, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError("public key is not base64") from e
        if len(raw) != 32:
            raise ValueError(f"public key is {len(raw)} bytes, an Ed25519 key has 32")
        return VerifyKey(Ed25519PublicKey.from_public_bytes(raw))

    @classmethod
    def of(cls, key: VerifyKey) -> TrustKey:
        from cryptography.hazmat.primitives import serialization

        raw = key.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls(keytype="ed25519", public=base64.b64encode(raw).decode("ascii"))


class _Signed(_Strict):
    version: int = Field(ge=1, le=MAX_VERSION)
    expires: str
    keys: dict[KeyId, TrustKey] = Field(min_length=1, max_length=MAX_TRUST_KEYS)
    threshold: int = Field(ge=1, le=MAX_TRUST_KEYS)

    @field_validator("expires")
    @classmethod
    def _rfc3339(cls, v: str) -> str:
        parse_time(v)
        return v

    @model_validator(mode="after")
    def _keys_match_ids(self) -> _Signed:
        if self.threshold > len(self.keys):
            raise ValueError(f"threshold {self.threshold} exceeds the {len(self.keys)} keys listed")
        for keyid, key in self.keys.items():
            if key.verify_key().keyid != keyid:
                raise ValueError(f"key {keyid[:16]}… is listed under an id that is not its sha256")
        return self

    @property
    def expires_at(self) -> datetime:
        return parse_time(self.expires)

    def policy(self, revoked: frozenset[str] = frozenset()) -> TrustPolicy:
        active = {k: v.verify_key() for k, v in self.keys.items() if k not in revoked}
        return TrustPolicy(keys=active, threshold=self.threshold, revoked=revoked)


class RootSigned(_Signed):
    """The root role: the keys that sign keys documents and the next root."""

    type: Literal["root"]


class KeysSigned(_Signed):
    """The publisher keys artifacts must be signed by, and the keys revoked for good."""

    type: Literal["keys"]
    revoked: list[KeyId] = Field(default_factory=list, max_length=MAX_REVOKED_KEYS)

    @model_validator(mode="after")
    def _revoked_not_trusted(self) -> KeysSigned:
        both = set(self.revoked) & set(self.keys)
        if both:
            raise ValueError(f"key {min(both)[:16]}… is both trusted and revoked")
        return self


@dataclass(frozen=True)
class TrustDocument:
    """A parsed envelope: the signed part, its canonical bytes (what signatures cover), the signatures."""

    signed: RootSigned | KeysSigned
    signed_bytes: bytes
    signatures: tuple[Signature, ...]

    @property
    def version(self) -> int:
        return self.signed.version

    @property
    def kind(self) -> str:
        return self.signed.type

    def to_json(self) -> dict[str, Any]:
        return {"signed": json.loads(self.signed_bytes), "signatures": [s.to_dict() for s in self.signatures]}

    def to_bytes(self) -> bytes:
        """The canonical envelope: what files hold and the server stores."""
        return canonical_json(self.to_json())

    def check_signed_by(self, signer: RootSigned, what: str) -> None:
        try:
            _check_signatures(self.signed_bytes, list(self.signatures), signer.policy())
        except SignatureError as e:
            raise TrustSignatureError(f"{self.kind} v{self.version} is not signed by {what}: {e}") from e

    def check_fresh(self, now: datetime) -> None:
        if now >= self.signed.expires_at:
            raise TrustExpiredError(f"{self.kind} v{self.version} expired at {self.signed.expires}")


def _describe(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def parse_document(data: bytes | Mapping[str, Any], kind: Literal["root", "keys"]) -> TrustDocument:
    """A root or keys envelope, as bytes or already parsed JSON; :class:`TrustFormatError` names what is wrong.

    Signatures are not checked here: only :class:`TrustState` knows which root must have signed.
    """
    if isinstance(data, bytes | bytearray):
        if len(data) > MAX_TRUST_DOCUMENT_BYTES:
            raise TrustFormatError(f"{kind} document is {len(data)} bytes; the limit is {MAX_TRUST_DOCUMENT_BYTES}")
        try:
            value: Any = json.loads(bytes(data).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise TrustFormatError(f"{kind} document is not UTF-8 JSON: {type(e).__name__}") from e
    else:
        value = data
    if not isinstance(value, Mapping) or set(value) != {"signed", "signatures"}:
        raise TrustFormatError(f'{kind} document must be an object {{"signed": {{…}}, "signatures": […]}}')
    signed, sigs = value["signed"], value["signatures"]
    if not isinstance(signed, Mapping) or signed.get("type") != kind:
        found = signed.get("type") if isinstance(signed, Mapping) else None
        raise TrustFormatError(f"expected a {kind} document, got type {found!r}")
    if not isinstance(sigs, list) or len(sigs) > 2 * MAX_TRUST_KEYS:
        raise TrustFormatError(f"{kind} document: signatures must be a list of at most {2 * MAX_TRUST_KEYS}")
    try:
        signatures = tuple(Signature.from_dict(s) for s in sigs)
        signed_bytes = canonical_json(signed)
    except (ValueError, ManifestError) as e:
        raise TrustFormatError(f"{kind} document: {e}") from e
    except RecursionError as e:  # parsed JSON nested about as deep as the parser goes: deeper while encoding
        raise TrustFormatError(f"{kind} document is nested too deeply") from e
    if len(signed_bytes) > MAX_TRUST_DOCUMENT_BYTES:
        raise TrustFormatError(f"{kind} document is above {MAX_TRUST_DOCUMENT_BYTES} bytes")
    model = RootSigned if kind == "root" else KeysSigned
    try:
        parsed = model.model_validate_json(signed_bytes, strict=True)
    except ValidationError as e:
        raise TrustFormatError(f"invalid {kind} document: {_describe(e)}") from e
    return TrustDocument(parsed, signed_bytes, signatures)


@dataclass(frozen=True)
class TrustChain:
    """What a server serves and an agent persists: roots (oldest first, or just the newest) and the keys document."""

    roots: tuple[Mapping[str, Any], ...]
    keys: Mapping[str, Any] | None

    @classmethod
    def from_json(cls, value: Any) -> TrustChain:
        if not isinstance(value, Mapping) or not isinstance(value.get("roots"), list):
            raise TrustFormatError('a trust chain is an object {"roots": [...], "keys": {...} | null}')
        roots, keys = value["roots"], value.get("keys")
        if len(roots) > MAX_CHAIN_ROOTS:
            raise TrustFormatError(f"the chain carries {len(roots)} roots; at most {MAX_CHAIN_ROOTS} are read")
        if not all(isinstance(r, Mapping) for r in roots) or not (keys is None or isinstance(keys, Mapping)):
            raise TrustFormatError("trust chain entries must be documents (objects)")
        return cls(tuple(roots), keys)

    def to_json(self) -> dict[str, Any]:
        return {"roots": [dict(r) for r in self.roots], "keys": None if self.keys is None else dict(self.keys)}


@dataclass(frozen=True)
class TrustState:
    """The root a device (or server) trusts now, and the keys document it accepted under it."""

    root: TrustDocument
    keys: TrustDocument | None = None

    @classmethod
    def from_root(cls, data: bytes | Mapping[str, Any]) -> TrustState:
        """The starting point, handed over out of band (`--root`): it must be signed by its own threshold."""
        root = parse_document(data, "root")
        assert isinstance(root.signed, RootSigned)
        root.check_signed_by(root.signed, "its own root keys")
        return cls(root)

    @property
    def tag(self) -> str:
        """`r<root version>-k<keys version>`: what the server announces and the agent compares."""
        return f"r{self.root.version}-k{0 if self.keys is None else self.keys.version}"

    def policy(self) -> TrustPolicy | None:
        """The publisher keys (minus the revoked ones) and threshold; None before a keys document."""
        if self.keys is None:
            return None
        signed = self.keys.signed
        assert isinstance(signed, KeysSigned)
        return signed.policy(frozenset(signed.revoked))

    def chain(self) -> TrustChain:
        return TrustChain((self.root.to_json(),), None if self.keys is None else self.keys.to_json())

    def update(self, chain: TrustChain, *, now: datetime) -> TrustState:
        """The state after `chain`, or a :class:`TrustError` (the state is unchanged: it is immutable)."""
        root = self.update_root(chain.roots, now=now)
        return root.update_keys(chain.keys, now=now) if chain.keys is not None else root

    def update_root(self, roots: Sequence[bytes | Mapping[str, Any]], *, now: datetime) -> TrustState:
        """Walk the root chain from the trusted root, one version at a time; the final root must be fresh."""
        if len(roots) > MAX_CHAIN_ROOTS:
            raise TrustFormatError(f"the chain carries {len(roots)} roots; at most {MAX_CHAIN_ROOTS} are read")
        docs = sorted((parse_document(r, "root") for r in roots), key=lambda d: d.version)
        trusted = self.root
        if docs and docs[-1].version < trusted.version:
            raise TrustRollbackError(
                f"the chain ends at root v{docs[-1].version}, below the trusted root v{trusted.version}"
            )
        for doc in docs:
            if doc.version < trusted.version:
                continue  # history the device has walked already
            if doc.version == trusted.version:
                if doc.signed_bytes != trusted.signed_bytes:
                    raise TrustRollbackError(
                        f"root v{doc.version} in the chain differs from the trusted root v{doc.version}"
                    )
                continue
            if doc.version != trusted.version + 1:
                held = trusted.version
                raise TrustSkippedVersionError(
                    f"root v{doc.version} follows the trusted root v{held}: v{held + 1} is missing"
                )
            assert isinstance(trusted.signed, RootSigned) and isinstance(doc.signed, RootSigned)
            doc.check_signed_by(trusted.signed, f"the threshold of root v{trusted.version}")
            doc.check_signed_by(doc.signed, "its own root keys")
            trusted = doc
        if trusted is not self.root:
            trusted.check_fresh(now)
        return TrustState(trusted, self.keys)

    def update_keys(self, data: bytes | Mapping[str, Any], *, now: datetime) -> TrustState:
        """Accept a keys document signed by the current root's threshold, newer than the held one, fresh."""
        doc = parse_document(data, "keys")
        held = self.keys
        if held is not None and doc.signed_bytes == held.signed_bytes:
            return self  # the one accepted already (possibly under an earlier root)
        if held is not None and doc.version < held.version:
            raise TrustRollbackError(f"keys v{doc.version} is older than the trusted keys v{held.version}")
        if held is not None and doc.version == held.version:
            raise TrustRollbackError(f"keys v{doc.version} differs from the trusted keys document of the same version")
        assert isinstance(self.root.signed, RootSigned)
        doc.check_signed_by(self.root.signed, f"the threshold of root v{self.root.version}")
        doc.check_fresh(now)
        return TrustState(self.root, doc)


def _envelope(signed: RootSigned | KeysSigned, signers: Sequence[SigningKey]) -> bytes:
    if not signers:
        raise TrustFormatError("at least one signing key is needed")
    data = canonical_json(signed.model_dump(mode="json"))
    sigs = {k.keyid: k.sign(data) for k in signers}  # one signature per distinct key
    return canonical_json({"signed": json.loads(data), "signatures": [s.to_dict() for s in sigs.values()]})


def _validated(model: type[RootSigned] | type[KeysSigned], fields: dict[str, Any]) -> RootSigned | KeysSigned:
    try:
        return model.model_validate(fields, strict=False)
    except ValidationError as e:
        raise TrustFormatError(f"invalid {fields['type']} document: {_describe(e)}") from e


def _key_map(keys: Sequence[VerifyKey]) -> dict[str, TrustKey]:
    return {k.keyid: TrustKey.of(k) for k in keys}


def sign_root(
    *, version: int, expires: datetime, keys: Sequence[VerifyKey], threshold: int, signers: Sequence[SigningKey]
) -> bytes:
    """A root document. A first root is signed by its own keys; root N+1 by root N's threshold and its own."""
    fields = {
        "type": "root",
        "version": version,
        "expires": format_time(expires),
        "keys": _key_map(keys),
        "threshold": threshold,
    }
    return _envelope(_validated(RootSigned, fields), signers)


def sign_keys(
    *,
    version: int,
    expires: datetime,
    keys: Sequence[VerifyKey],
    threshold: int,
    revoked: Sequence[str] = (),
    signers: Sequence[SigningKey],
) -> bytes:
    """A keys document, signed by root keys (the current root's threshold of them)."""
    fields = {
        "type": "keys",
        "version": version,
        "expires": format_time(expires),
        "keys": _key_map(keys),
        "threshold": threshold,
        "revoked": sorted(set(revoked)),
    }
    return _envelope(_validated(KeysSigned, fields), signers)
