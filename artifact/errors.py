"""Every way an artifact, a payload or a delta can be refused.

Callers catch :class:`ArtifactError` to refuse anything untrustworthy, and the specific classes to
say *why*. None of these is worth retrying with the same bytes: they describe bad content, not a
transport failure (transport errors belong to the code that fetches, not to this package).

::

    ArtifactError
    ├── ManifestError                 manifest is not valid JSON / not canonical / breaks the schema
    ├── ModelMismatchError            manifest is for another model than the caller expects
    ├── SignatureError
    │   ├── UnknownKeyError           no signature by any trusted key
    │   ├── BadSignatureError         a trusted key's signature does not verify (tampering)
    │   ├── ThresholdError            valid signatures, but fewer than the threshold
    │   └── RevokedKeyError           signed only by keys the current keys document revoked
    ├── ExpiredError                  manifest's expires_at is in the past
    ├── DowngradeError                version is not above the installed one
    ├── LengthError
    │   ├── TooLongError              more bytes than declared (stopped while streaming)
    │   └── TruncatedError            fewer bytes than declared
    ├── HashMismatchError             sha256 differs from the signed one
    ├── PayloadError
    │   ├── UnsupportedEncodingError  payload encoding this version cannot decode
    │   └── DecompressionBombError    payload inflates beyond the declared ONNX length
    ├── ArtifactFormatError           artifact file truncated or garbled
    ├── KeyFileError                  a key file that cannot be read as an Ed25519 PEM key
    ├── TrustError                    a root or keys document refused (artifact.trust)
    │   ├── TrustFormatError          malformed, oversized, of another type, or keys that do not match their ids
    │   ├── TrustSignatureError       not signed by the threshold of the root(s) that must sign it
    │   ├── TrustExpiredError         the document's `expires` lies in the past
    │   ├── TrustRollbackError        version below the trusted one, or the same version with other content
    │   └── TrustSkippedVersionError  root N+2 offered to a device that trusts root N
    └── DeltaError
        ├── DeltaFormatError          delta truncated, garbled or of an unknown format version
        ├── DeltaBaseMismatchError    delta was made against another base model
        └── DeltaResultError          rebuilt model does not match the sha256 the delta promises
"""

from __future__ import annotations


class ArtifactError(Exception):
    """Base of every refusal in this package. The message is meant for humans."""


class ManifestError(ArtifactError):
    """The manifest bytes are not a valid, canonical schema-1 manifest."""


class ModelMismatchError(ArtifactError):
    """The manifest names a different model than the one the caller expects."""


class SignatureError(ArtifactError):
    """The signatures do not meet the trust policy."""


class UnknownKeyError(SignatureError):
    """None of the signatures was made by a trusted key."""


class BadSignatureError(SignatureError):
    """A signature claims a trusted key but does not verify: the bytes were altered."""


class ThresholdError(SignatureError):
    """Fewer distinct trusted keys signed than the policy's threshold requires."""


class RevokedKeyError(SignatureError):
    """The only signatures are by keys that the current keys document revoked."""


class ExpiredError(ArtifactError):
    """The manifest's `expires_at` lies in the past."""


class DowngradeError(ArtifactError):
    """The offered version is not strictly above the installed one (rollback attack or replay)."""


class LengthError(ArtifactError):
    """The byte count differs from the signed length."""


class TooLongError(LengthError):
    """More bytes arrived than the signed length; reading stopped at the first extra byte."""


class TruncatedError(LengthError):
    """The data ended before the signed length was reached."""


class HashMismatchError(ArtifactError):
    """The sha256 of the bytes differs from the signed digest."""


class PayloadError(ArtifactError):
    """The payload cannot be decoded into the ONNX model."""


class UnsupportedEncodingError(PayloadError):
    """The payload uses an encoding this version does not know."""


class DecompressionBombError(PayloadError):
    """The payload inflates beyond the signed ONNX length; decoding stopped there."""


class ArtifactFormatError(ArtifactError):
    """The artifact file is truncated or garbled."""


class KeyFileError(ArtifactError):
    """A key file is missing, unreadable, or not an Ed25519 PEM key."""


class TrustError(ArtifactError):
    """A root or keys document (:mod:`artifact.trust`) is refused; the trusted state is unchanged."""


class TrustFormatError(TrustError):
    """The document is not valid JSON of the expected type, too large, or its key ids do not match its keys."""


class TrustSignatureError(TrustError):
    """The document is not signed by the threshold of the root that must sign it."""


class TrustExpiredError(TrustError):
    """The document's `expires` lies in the past."""


class TrustRollbackError(TrustError):
    """The document's version is below the trusted one, or equal to it with other content (a replay or a fork)."""


class TrustSkippedVersionError(TrustError):
    """A root document skips a version: each root must be signed by its predecessor."""


class DeltaError(ArtifactError):
    """A delta cannot be made or applied."""


class DeltaFormatError(DeltaError):
    """The delta is truncated, garbled, or of an unknown format version."""


class DeltaBaseMismatchError(DeltaError):
    """The delta was made against another base model than the one it is applied to."""


class DeltaResultError(DeltaError):
    """The rebuilt model does not hash to the result the delta promises."""
