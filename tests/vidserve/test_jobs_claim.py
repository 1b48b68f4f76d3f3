"""`JobStore.claim_next` while another transaction holds a queued job's row lock for a moment (the API marking the
job published right after its wake-up went out, a cancel, another claimer): it answers None only when no job is
claimable, never because the one claimable row was locked when it looked.

Each test holds the lock in a session of its own and claims on a thread; it learns that the claim waits from
Postgres (`pg_stat_activity`), never from time. Each test uses a model name of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from service_harness import wait_until
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from vidserve.db import session_factory
from vidserve.jobs import PRIORITIES, JobStore
from vidserve.schema import Job, JobStatus

PARAMS = {"prompt": "a fox", "num_frames": 9, "height": 32, "width": 32, "num_inference_steps": 4, "seed": 1}


@pytest.fixture
def holder(private_database: str) -> Iterator[Session]:
    """A session whose open transaction holds row locks until the test commits it."""
    with session_factory(private_database)() as session:
        yield session
        session.rollback()


class Claim:
    """`claim_next` running on a thread of its own."""

    def __init__(self, store: JobStore, model: str, **options: int) -> None:
        self.result: list[Job | None] = []
        self.thread = threading.Thread(
            target=lambda: self.result.append(store.claim_next([model], "worker/1", 60, **options))
        )
        self.thread.start()

    def done(self) -> Job | None:
        self.thread.join(60)
        assert not self.thread.is_alive(), "claim_next did not return"
        return self.result[0]


def claim_waits_for_a_lock(store: JobStore, claim: Claim) -> bool:
    """Whether the claim is blocked on a lock in Postgres (or returned, so never will be)."""
    with store._sessions() as s:
        waiting = s.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%FOR NO KEY UPDATE%'"
            )
        )
    return bool(waiting) or not claim.thread.is_alive()


def test_a_job_marked_published_in_an_open_transaction_is_claimed_once_that_commits(
    store: JobStore, holder: Session, model: str
) -> None:
    job = store.create(model=model, params=PARAMS)
    # What announce_job does right after the wake-up went out: its worker may claim in between.
    holder.execute(update(Job).where(Job.id == job.id).values(published_at=text("now()")))

    claim = Claim(store, model)
    wait_until(lambda: claim_waits_for_a_lock(store, claim), 30, what="the claim to wait for the row lock")
    assert claim.thread.is_alive(), f"claim_next returned {claim.result} while the job was queued and locked"
    holder.commit()

    claimed = claim.done()
    assert claimed is not None and claimed.id == job.id
    assert store.get(job.id).status == JobStatus.RUNNING


def test_a_job_that_another_claimer_holds_and_takes_leaves_nothing_to_claim(
    store: JobStore, holder: Session, model: str
) -> None:
    job = store.create(model=model, params=PARAMS)
    holder.execute(update(Job).where(Job.id == job.id).values(status=JobStatus.RUNNING, lease_owner="worker/2"))

    claim = Claim(store, model)
    wait_until(lambda: claim_waits_for_a_lock(store, claim), 30, what="the claim to wait for the row lock")
    holder.commit()

    assert claim.done() is None
    assert store.get(job.id).lease_owner == "worker/2"


def test_a_locked_job_does_not_hold_up_the_claim_of_another_that_waits(
    store: JobStore, holder: Session, model: str
) -> None:
    locked, free = (store.create(model=model, params=PARAMS) for _ in range(2))
    holder.execute(select(Job.id).where(Job.id == locked.id).with_for_update())

    claimed = store.claim_next([model], "worker/1", 60)  # the test's thread: a wait here would hang the test

    assert claimed is not None and claimed.id == free.id
    holder.commit()
    assert store.get(locked.id).status == JobStatus.QUEUED


def test_a_preemptions_claim_takes_only_jobs_above_the_priority_it_gives(store: JobStore, model: str) -> None:
    store.create(model=model, params=PARAMS, priority=PRIORITIES["normal"])
    assert store.claim_next([model], "worker/1", 60, above_priority=PRIORITIES["normal"]) is None
    high = store.create(model=model, params=PARAMS, priority=PRIORITIES["high"])
    claimed = store.claim_next([model], "worker/1", 60, above_priority=PRIORITIES["normal"])
    assert claimed is not None and claimed.id == high.id
