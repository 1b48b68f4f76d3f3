"""The end-to-end tests drive the suite's shared real stack (tests/conftest.py: `stack`): the API under gunicorn,
a generation worker and a webhook sender, subprocesses against the suite's Postgres, Redis DB and S3 server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from service_harness import WebhookReceiver


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver.start()
    yield server
    server.stop()
