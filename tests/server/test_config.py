"""Settings: working defaults for development, and no way to run production on a placeholder secret."""

from __future__ import annotations

from pathlib import Path

import pytest

import artifact as A
from server import Settings, create_app
from server.config import load_settings
from server.errors import ConfigurationError

STRONG = {
    "admin_token": "a" * 12 + "-admin-0123456789abcdef",
    "enrollment_secret": "e" * 12 + "-enroll-0123456789abcdef",
    "secret_key": "s" * 12 + "-secret-0123456789abcdef",
    "metrics_token": "m" * 12 + "-metrics-0123456789abcdef",
    "public_url": "https://ota.example.com",
}


def test_defaults_are_the_documented_embedded_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("OTA_"):
            monkeypatch.delenv(name)
    s = load_settings()
    assert s.env == "development"
    assert s.database_url == "sqlite:///./ota-data/ota.db"
    assert s.storage_url == "file://./ota-data/blobs"
    assert s.poll_interval == 300 and s.delta_max_ratio == 0.6
    assert s.publisher_keys == []


def test_environment_variables_are_read_with_the_ota_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OTA_POLL_INTERVAL", "42")
    monkeypatch.setenv("OTA_PUBLISHER_KEYS", f"{tmp_path}/a.pem, {tmp_path}/b.pem")
    monkeypatch.setenv("OTA_STORAGE_URL", "s3://bucket/prefix")
    s = load_settings()
    assert s.poll_interval == 42
    assert s.publisher_keys == [tmp_path / "a.pem", tmp_path / "b.pem"]
    assert s.storage_url == "s3://bucket/prefix"


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({}, "OTA_ADMIN_TOKEN is a placeholder"),
        ({**STRONG, "admin_token": ""}, "OTA_ADMIN_TOKEN is shorter"),
        ({**STRONG, "enrollment_secret": "changeme"}, "OTA_ENROLLMENT_SECRET is a placeholder"),
        ({**STRONG, "secret_key": "short"}, "OTA_SECRET_KEY is shorter"),
        ({**STRONG, "secret_key": STRONG["admin_token"]}, "must differ"),
        ({**STRONG, "publisher_keys": []}, "OTA_PUBLISHER_KEYS is empty"),
        (
            {**STRONG, "previous_secret_keys": "short@2027-01-31T00:00:00Z"},
            "OTA_PREVIOUS_SECRET_KEYS entry 1 is shorter",
        ),
        (
            {**STRONG, "previous_enrollment_secrets": f"{'x' * 30}@2027-01-31T00:00:00Z,changeme@2027-01-31T00:00:00Z"},
            "OTA_PREVIOUS_ENROLLMENT_SECRETS entry 2 is a placeholder",
        ),
    ],
)
def test_production_refuses_placeholder_or_missing_secrets(
    overrides: dict[str, object], complaint: str, tmp_path: Path
) -> None:
    values = {"env": "production", "publisher_keys": [tmp_path / "k.pem"], **overrides}
    with pytest.raises(ConfigurationError, match=complaint):
        load_settings(**values)


def test_production_accepts_real_secrets(tmp_path: Path) -> None:
    s = load_settings(env="production", publisher_keys=[tmp_path / "k.pem"], **STRONG)
    assert s.env == "production"
    assert "0123456789" not in repr(s)  # secrets never show in logs or tracebacks


@pytest.mark.parametrize("url", ["ftp://x", "/just/a/path", ""])
def test_unknown_storage_scheme_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="OTA_STORAGE_URL"):
        load_settings(storage_url=url)


def test_unreadable_publisher_key_stops_the_server_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    with pytest.raises(ConfigurationError, match="OTA_PUBLISHER_KEYS"):
        create_app(Settings(database_url=f"sqlite:///{tmp_path}/x.db", publisher_keys=[bad]))
    with pytest.raises(ConfigurationError, match="OTA_PUBLISHER_KEYS"):
        create_app(Settings(database_url=f"sqlite:///{tmp_path}/x.db", publisher_keys=[tmp_path / "missing.pem"]))


def test_threshold_above_the_number_of_keys_stops_the_server(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    A.save_public_key(A.generate_key(), key)
    with pytest.raises(ConfigurationError, match="THRESHOLD"):
        create_app(Settings(database_url=f"sqlite:///{tmp_path}/x.db", publisher_keys=[key], publisher_threshold=2))


def test_previous_secrets_are_read_as_secret_at_date_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "OTA_PREVIOUS_SECRET_KEYS",
        "old-key-with-@-inside-0123456789@2027-01-31T00:00:00Z, k2@2026-06-01T12:00:00+02:00",
    )
    s = load_settings()
    assert [(p.secret.get_secret_value(), p.until.isoformat()) for p in s.previous_secret_keys] == [
        ("old-key-with-@-inside-0123456789", "2027-01-31T00:00:00+00:00"),
        ("k2", "2026-06-01T12:00:00+02:00"),
    ]
    assert "0123456789" not in repr(s)


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("hunter2-no-date", "entry 1 must look like SECRET@"),
        ("hunter2@yesterday", "entry 1: the date after '@' is not an RFC 3339 time"),
        ("hunter2@2027-01-31T00:00:00", "needs a time zone"),
    ],
)
def test_malformed_previous_secret_is_refused_without_echoing_it(value: str, complaint: str) -> None:
    with pytest.raises(ConfigurationError, match=complaint) as caught:
        load_settings(previous_secret_keys=value)
    assert "hunter2" not in str(caught.value)


def test_previous_secret_equal_to_the_current_one_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="OTA_PREVIOUS_ENROLLMENT_SECRETS repeats a secret"):
        load_settings(enrollment_secret="same-secret", previous_enrollment_secrets="same-secret@2027-01-31T00:00:00Z")
