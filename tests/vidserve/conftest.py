"""Fixtures of the shared job domain's tests: databases of their own, apart from the suite's shared one.

A worker that another test left running sweeps the shared database; these tests must see only their jobs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from vidserve import db


@pytest.fixture(scope="session")
def private_database(database_url: str) -> Iterator[str]:
    """A migrated database only the job store tests use."""
    url = f"{database_url}_jobs"
    db.create_database(url)
    db.upgrade(url)
    yield url
    db.drop_database(url)


@pytest.fixture
def empty_database(database_url: str) -> Iterator[str]:
    """A database that exists but has no tables (migrations start from here)."""
    url = f"{database_url}_empty_{uuid.uuid4().hex[:6]}"
    db.create_database(url)
    yield url
    db.drop_database(url)
