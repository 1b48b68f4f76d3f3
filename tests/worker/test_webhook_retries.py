"""When a failed webhook is tried again: the Standard Webhooks schedule with jitter, the receiver's Retry-After,
and 410 Gone, which disables the URL (durably, in Postgres) until an operator enables it again.

The real sender posts to a real receiver on loopback and records in the suite's Postgres.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.utils
import random

import pytest
from service_harness import ManualClock, WebhookReceiver
from sqlalchemy import select
from test_webhooks import Scheduled, delivery, make_delivery

from vidserve.db import session_factory
from vidserve.schema import DeliveryStatus, WebhookEndpoint
from vidserve.settings import Settings
from vidserve.tools import cli
from vidserve.webhook_store import WebhookStore
from worker.webhooks import RETRY_AFTER_MAX, SCHEDULE, WebhookSender, retry_delay

STANDARD = [5, 300, 1800, 7200, 18000, 36000, 36000]  # seconds before attempts 2..8


def test_the_schedule_is_the_standard_webhooks_one_with_twenty_percent_jitter(settings: Settings) -> None:
    unscaled = dataclasses.replace(settings, webhook_retry_scale=1.0)
    rng = random.Random(7)
    assert list(SCHEDULE) == [0, *STANDARD]
    for failures, step in enumerate([*STANDARD, 36000, 36000], start=1):  # beyond the schedule: its last step
        waits = [retry_delay(unscaled, failures, rng) for _ in range(200)]
        assert all(step * 0.8 <= w <= step * 1.2 for w in waits), (failures, min(waits), max(waits))
        assert max(waits) - min(waits) > step * 0.3  # really spread, not one fixed value
    scaled = dataclasses.replace(settings, webhook_retry_scale=0.01)
    assert all(0.04 <= retry_delay(scaled, 1, rng) <= 0.06 for _ in range(100))


def test_the_sender_waits_the_jittered_schedule_between_attempts(settings: Settings, receiver: WebhookReceiver) -> None:
    unscaled = dataclasses.replace(settings, webhook_retry_scale=1.0, webhook_max_attempts=3)
    receiver.fail_first["/sched"] = 10
    delivery_id = make_delivery(unscaled, receiver.url("/sched"))
    scheduled = Scheduled()
    clock = ManualClock()
    sender = WebhookSender(unscaled, scheduled, clock)

    outcomes = [sender.deliver(delivery_id)]
    for _ in range(2):
        clock.advance(outcomes[-1].retry_in - 1.0)
        assert sender.deliver(delivery_id).status == "skipped"  # a second before it is due: nothing sent
        clock.advance(1.0)
        outcomes.append(sender.deliver(delivery_id))

    assert [o.status for o in outcomes] == ["retrying", "retrying", "failed"]
    assert 5 * 0.8 <= outcomes[0].retry_in <= 5 * 1.2
    assert 300 * 0.8 <= outcomes[1].retry_in <= 300 * 1.2
    assert [c[1] for c in scheduled.calls] == [outcomes[0].retry_in, outcomes[1].retry_in]
    assert len(receiver.at("/sched")) == 3


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_in_seconds_is_honoured(settings: Settings, receiver: WebhookReceiver, status: int) -> None:
    path = f"/busy/{status}"
    receiver.answers[path] = [(status, {"retry-after": "1"})]
    delivery_id = make_delivery(settings, receiver.url(path))
    scheduled = Scheduled()
    clock = ManualClock()
    sender = WebhookSender(settings, scheduled, clock)

    first = sender.deliver(delivery_id)
    # The schedule alone would wait 5 s x 0.01; the receiver asked for 1 s.
    assert (first.status, first.status_code, first.retry_in) == ("retrying", status, 1.0)
    assert scheduled.calls == [(delivery_id, 1.0)]
    assert sender.deliver(delivery_id).status == "skipped"  # not before the time the receiver asked for
    clock.advance(0.5)
    assert sender.deliver(delivery_id).status == "skipped"
    clock.advance(0.5)
    assert sender.deliver(delivery_id).status == "delivered"
    assert [h.status for h in receiver.at(path)] == [status, 200]


def test_retry_after_as_an_http_date_is_honoured_and_capped(settings: Settings, receiver: WebhookReceiver) -> None:
    in_3s = email.utils.format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3), usegmt=True)
    receiver.answers["/date"] = [(503, {"retry-after": in_3s})]
    receiver.answers["/far"] = [(429, {"retry-after": str(7 * 86400)})]
    receiver.answers["/plain"] = [(500, {"retry-after": "120"})]
    sender = WebhookSender(settings)

    dated = sender.deliver(make_delivery(settings, receiver.url("/date")))
    far_id = make_delivery(settings, receiver.url("/far"))
    far = sender.deliver(far_id)
    plain = sender.deliver(make_delivery(settings, receiver.url("/plain")))

    assert 1.0 <= dated.retry_in <= 3.0  # the date has whole seconds
    assert far.retry_in == RETRY_AFTER_MAX == 10 * 3600
    due = delivery(settings, far_id).next_attempt_at
    assert abs((due - dt.datetime.now(dt.UTC)).total_seconds() - RETRY_AFTER_MAX) < 60
    assert plain.retry_in < 1.0  # only 429 and 503 carry a Retry-After that counts; 500 follows the schedule


def test_410_gone_disables_the_url_until_an_operator_enables_it(
    settings: Settings, receiver: WebhookReceiver, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = receiver.url("/gone")
    receiver.answers["/gone"] = [(410, {})]
    first_id = make_delivery(settings, url)
    waiting_id = make_delivery(settings, url)  # another job's event, pending for the same URL
    sender = WebhookSender(settings, Scheduled())

    outcome = sender.deliver(first_id)

    assert (outcome.status, outcome.status_code, outcome.retry_in) == ("disabled", 410, None)
    row = delivery(settings, first_id)
    assert (row.status, row.last_status_code, row.last_error) == (DeliveryStatus.FAILED, 410, "HTTP 410")
    with session_factory(settings.database_url)() as s:
        endpoint = s.scalars(select(WebhookEndpoint).where(WebhookEndpoint.url == url)).one()
    assert endpoint.reason.startswith("HTTP 410 Gone at ")
    waiting = delivery(settings, waiting_id)
    assert waiting.status == DeliveryStatus.FAILED and waiting.last_error.startswith("webhook URL disabled: HTTP 410")
    assert sender.deliver(waiting_id).status == "skipped"

    # A later event for the URL is recorded but never sent.
    later_id = make_delivery(settings, url)
    assert sender.deliver(later_id).status == "skipped"
    later = delivery(settings, later_id)
    assert later.status == DeliveryStatus.FAILED and later.attempts == 0
    assert later.last_error.startswith("webhook URL disabled")
    assert len(receiver.at("/gone")) == 1

    # The operator enables it again (the CLI, reading the database from the environment); a redelivery is sent.
    monkeypatch.setenv("VIDSERVE_DATABASE_URL", settings.database_url)
    capsys.readouterr()
    assert cli.main(["webhooks", "disabled"]) == 0 and url in capsys.readouterr().out
    assert cli.main(["webhooks", "enable", url]) == 0
    assert WebhookStore(settings.database_url).disabled(url) is None
    assert cli.main(["webhooks", "enable", url]) == 1  # not disabled any more
    assert WebhookStore(settings.database_url).redeliver(later_id)
    assert sender.deliver(later_id).status == "delivered"
    assert [h.status for h in receiver.at("/gone")] == [410, 200]
