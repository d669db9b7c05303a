"""Fixtures every test package shares; the helpers they build on are in ``tests/support.py``."""

from __future__ import annotations

import pytest

import artifact as A


@pytest.fixture(scope="session")
def signing_key() -> A.SigningKey:
    """The publisher's key: what the tests sign with and the server or agent trusts."""
    return A.generate_key()


@pytest.fixture(scope="session")
def other_key() -> A.SigningKey:
    """A valid key nobody trusts."""
    return A.generate_key()
