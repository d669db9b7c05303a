"""The fleet simulator: many devices, each with its own enrollment and storage, moving together."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest

import artifact as A
from device_agent import FleetOptions, run_fleet
from device_agent.cli import main

from .fakeserver import SECRET, FakeServer
from .models import MODEL, Release


def _options(server: FakeServer, key: A.SigningKey, root: Path, until: int) -> FleetOptions:
    return FleetOptions(
        server=server.url,
        model=MODEL,
        enroll_secret=SECRET,
        devices=6,
        trust=A.TrustPolicy.of([key.verify_key]),
        model_dir=root,
        until_version=until,
        timeout=30,
        poll_interval=0.1,
        concurrency=8,
    )


def test_fleet_moves_to_each_target_version_over_deltas(
    server: FakeServer, releases: dict[int, Release], key: A.SigningKey, tmp_path: Path
) -> None:
    server.publish(releases[1])
    out = io.StringIO()
    first = asyncio.run(run_fleet(_options(server, key, tmp_path / "fleet", 1), out))
    assert first.ok and first.versions == {"v1": 6} and first.reached == 6
    assert first.bytes["delta"] == 0 and first.bytes["full"] == 6 * len(releases[1].payload)
    assert len(server.enrollments) == 6 and len(set(server.tokens.values())) == 6

    server.publish(releases[2])
    second = asyncio.run(run_fleet(_options(server, key, tmp_path / "fleet", 2), out))
    assert second.ok and second.versions == {"v2": 6} and second.failed == {}
    assert second.bytes["full"] == 0 and 0 < second.bytes["delta"] < second.full_payload_bytes
    assert len(server.enrollments) == 6  # the same devices, with their stored tokens
    assert len(server.events_of("installed", 2)) == 6
    assert len({e["device_id"] for e in server.events_of("installed", 2)}) == 6
    assert "fleet 6 devices | v2: 6" in out.getvalue()


def test_fleet_reports_a_refused_version_instead_of_waiting_forever(
    server: FakeServer, releases: dict[int, Release], key: A.SigningKey, tmp_path: Path
) -> None:
    server.deltas = False
    server.publish(releases[1])
    server.blob_override[releases[1].payload_sha] = releases[1].payload[:-1] + b"!"
    report = asyncio.run(run_fleet(_options(server, key, tmp_path / "fleet", 1), io.StringIO()))
    assert not report.ok and report.failed == {"hash_mismatch": 6} and report.versions == {"none": 6}


def test_simulate_command_prints_a_summary_and_exits_zero_on_success(
    server: FakeServer, releases: dict[int, Release], trust_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.publish(releases[1])
    argv = ["simulate", "--server", server.url, "--model", MODEL, "--enroll-secret", SECRET, "--devices", "3"]
    argv += ["--trust", str(trust_file), "--until-version", "1", "--timeout", "30", "--poll-interval", "0.1", "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] and summary["versions"] == {"v1": 3} and summary["devices"] == 3
