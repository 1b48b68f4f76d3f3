"""The fair queue in Postgres: `JobStore.claim_next` takes jobs by priority, then weighted fair share across API
keys, then age; concurrent claimers never take one job twice; `queue_place` says where a queued job stands.

Each test uses a model name of its own, so the jobs other tests leave queued in the private database never
take part.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid

from sqlalchemy import update

from vidserve.db import session_factory
from vidserve.jobs import PRIORITIES, JobStore
from vidserve.keys import KeyStore
from vidserve.schema import ApiKey, Job, JobStatus

PARAMS = {"prompt": "a fox", "num_frames": 9, "height": 32, "width": 32, "num_inference_steps": 4, "seed": 1}


def new_key(database_url: str, weight: float = 1.0) -> uuid.UUID:
    key, _token = KeyStore(database_url).create(f"key-{uuid.uuid4().hex[:6]}", ["jobs:write"])
    if weight != 1.0:
        with session_factory(database_url)() as s, s.begin():
            s.execute(update(ApiKey).where(ApiKey.id == key.id).values(weight=weight))
    return key.id


def submit(store: JobStore, model: str, key: uuid.UUID | None, n: int = 1, priority: str = "normal") -> list[str]:
    return [
        str(store.create(model=model, params=PARAMS, api_key_id=key, priority=PRIORITIES[priority]).id)
        for _ in range(n)
    ]


def drain(store: JobStore, model: str, finish: bool = True) -> list[str]:
    """Claim until nothing waits, finishing each job before the next claim (one slot); the claimed ids in order."""
    order = []
    while (job := store.claim_next([model], "worker/1", 60)) is not None:
        order.append(str(job.id))
        if finish:
            store.succeed(job.id, "worker/1", {"key": "k"}, None)
    return order


def test_a_key_that_floods_does_not_delay_another_keys_jobs_beyond_its_share(
    store: JobStore, private_database: str, model: str
) -> None:
    flood, other = new_key(private_database), new_key(private_database)
    a = submit(store, model, flood, 20)
    b = submit(store, model, other, 3)  # later than all of A's

    order = drain(store, model)

    assert sorted(order) == sorted(a + b)  # every job once
    # One slot, equal weights: the keys alternate while both wait (A's first start counts against it), each
    # key's jobs oldest first.
    assert order[:6] == [a[0], b[0], a[1], b[1], a[2], b[2]]
    assert order[6:] == a[3:]


def test_running_and_recently_started_jobs_count_against_their_keys_share(
    store: JobStore, private_database: str, model: str
) -> None:
    flood, other = new_key(private_database), new_key(private_database)
    a = submit(store, model, flood, 5)
    held = [store.claim_next([model], f"worker/{i}", 60) for i in range(2)]  # two slots busy with A's jobs
    assert [str(job.id) for job in held] == a[:2]
    b = submit(store, model, other, 2)

    # B has nothing running and A two: B's jobs take the next slots before A's third job.
    assert [str(store.claim_next([model], "worker/3", 60).id) for _ in range(3)] == [b[0], b[1], a[2]]


def test_a_key_of_weight_two_gets_two_jobs_for_each_of_a_weight_one_key(
    store: JobStore, private_database: str, model: str
) -> None:
    heavy, light = new_key(private_database, weight=2.0), new_key(private_database)
    h = submit(store, model, heavy, 6)
    lt = submit(store, model, light, 3)

    order = drain(store, model)

    assert sorted(order) == sorted(h + lt)
    # Shares: heavy 0.5 1 1.5 2 2.5 3, light 1 2 3; equal shares go oldest first (heavy's were submitted first).
    assert ["h" if job in h else "l" for job in order] == ["h", "h", "l", "h", "h", "l", "h", "h", "l"]


def test_anonymous_jobs_share_one_key(store: JobStore, private_database: str, model: str) -> None:
    anonymous = submit(store, model, None, 3)
    keyed = submit(store, model, new_key(private_database), 1)
    assert drain(store, model)[:3] == [anonymous[0], keyed[0], anonymous[1]]


def test_priority_orders_before_fairness_and_age(store: JobStore, private_database: str, model: str) -> None:
    key = new_key(private_database)
    low = submit(store, model, key, 1, "low")
    normal = submit(store, model, new_key(private_database), 2, "normal")
    high = submit(store, model, key, 2, "high")
    assert drain(store, model) == high + normal + low


def test_canceled_and_other_models_jobs_are_never_claimed(store: JobStore, model: str) -> None:
    canceled, kept = submit(store, model, None, 2)
    store.cancel(canceled)
    submit(store, model + "-other", None, 1)
    assert drain(store, model) == [kept]


def test_concurrent_claimers_take_every_job_exactly_once(store: JobStore, private_database: str, model: str) -> None:
    keys = [new_key(private_database) for _ in range(3)]
    submitted = [job for key in keys for job in submit(store, model, key, 10)]
    taken: list[str] = []
    lock = threading.Lock()

    def claimer(n: int) -> None:
        while (job := store.claim_next([model], f"worker/{n}", 60)) is not None:
            with lock:
                taken.append(str(job.id))

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert sorted(taken) == sorted(submitted)  # none lost, none twice
    with session_factory(private_database)() as s:
        statuses = {job.status for job in s.query(Job).filter(Job.model == model)}
    assert statuses == {JobStatus.RUNNING}


def test_queue_place_counts_the_jobs_before_and_decreases_as_they_start(
    store: JobStore, private_database: str, model: str
) -> None:
    first, second = new_key(private_database), new_key(private_database)
    a = submit(store, model, first, 3)
    b = submit(store, model, second, 1)
    # Order: a0 b0 a1 a2.
    assert [store.queue_place(store.get(job)).position for job in a + b] == [0, 2, 3, 1]
    assert store.queue_place(store.get(a[2])).estimated_start_at is None  # nothing started yet to estimate from

    places = []
    for _ in range(3):
        asked_at = dt.datetime.now(dt.UTC)
        places.append(store.queue_place(store.get(a[2])))
        job = store.claim_next([model], "worker/1", 60)
        store.succeed(job.id, "worker/1", {"key": "k"}, None)
    assert [place.position for place in places] == [3, 2, 1]
    # Two starts are enough to estimate from; a job with jobs before it starts later than now.
    assert places[2].estimated_start_at is not None and places[2].estimated_start_at > asked_at
    store.claim_next([model], "worker/1", 60)
    assert store.queue_place(store.get(a[2])) is None  # running: it has no place in the queue
