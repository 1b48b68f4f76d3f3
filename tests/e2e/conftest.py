"""The end-to-end tests drive the suite's shared real stack (tests/conftest.py: `stack`): the API under gunicorn,
a generation worker and a webhook sender, subprocesses against the suite's Postgres, Redis DB and S3 server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from service_harness import WebhookReceiver, new_gate

from worker.step_gate import StepGate


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver.start()
    yield server
    server.stop()


@pytest.fixture
def gate(tmp_path: Path) -> StepGate:
    """A step gate of this test's own, for the tests that start a worker of their own on the gated model."""
    return new_gate(tmp_path)
