"""Fixtures of the shared job domain's tests: databases of their own, apart from the suite's shared one.

A worker that another test left running sweeps the shared database; these tests must see only their jobs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from vidserve import db
from vidserve.job_view import job_to_dict
from vidserve.jobs import JobStore


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


@pytest.fixture
def store(private_database: str) -> JobStore:
    """A job store on the private database (a module may override it)."""
    return JobStore(private_database, view=lambda job: job_to_dict(job, None))


@pytest.fixture
def model() -> str:
    """A model name of this test's own: the queue of its jobs holds no other test's jobs."""
    return f"model-{uuid.uuid4().hex[:8]}"
