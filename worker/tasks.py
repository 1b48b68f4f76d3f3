"""The generate task: claim a job, run it on the engine, encode, upload, record the outcome.

A message is a wake-up for its model: the slot claims the first queued job of that model in the fair queue's
order (`JobStore.claim_next`), which may not be the job the message names. The claim is a conditional UPDATE
with a lease, so a duplicate or re-delivered message does nothing but claim the next waiting job, if any. While
the engine works, the slot's thread renews the lease, writes progress at most once per tick and reads the
cancel flag back from that same write. A job is `succeeded` only after its video (and its final latents, kept
for extensions) is in the bucket. An extension job starts from its source job's kept latents.

When every slot is busy and a job of a higher priority waits, the slot of the lowest-priority job claims it; that
job stops at its next checkpoint, goes back to the queue (to resume from that step) and the slot runs the taker
(worker.preemption).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.exc import OperationalError

from engine.request import (
    CheckpointMismatch,
    EngineError,
    GenerationRequest,
    GenerationResult,
    InvalidRequest,
    ModelUnavailable,
    RequestCanceled,
)
from vidserve.jobs import DEFAULT_PRIORITY, PRIORITIES, JobNotFound
from vidserve.queue import announce_job
from vidserve.schema import JobStatus
from vidserve.storage import VideoStore
from worker.checkpoints import JobCheckpoints
from worker.context import WorkerContext
from worker.latents import LatentsMissing, get_latents, put_latents
from worker.video import EncodedVideo, FrameStream, encode_mp4, iter_mp4_frames

log = logging.getLogger(__name__)
T = TypeVar("T")

# How often a running job's slot wakes to write progress and read the cancel flag: the cancel latency.
TICK_SECONDS = 0.5
# Longest wait between two reads of the cancel flag when there is no progress to write.
CANCEL_POLL_SECONDS = 2.0
# Wait between tries of the final write (for `result_write_seconds`); see `_record_success`.
RESULT_WRITE_RETRY_SECONDS = 1.0


# How often the slot of a job that may give way looks for a waiting job of a higher priority (one query).
PREEMPT_LOOK_SECONDS = 1.0
MAX_PRIORITY = max(PRIORITIES.values())

# Outcomes after which the job never runs again: its checkpoint is deleted.
TERMINAL_OUTCOMES = frozenset({"succeeded", "failed", "canceled"})

# Runs uploads while the slot's own thread renews the lease (see `_maintaining`).
_io_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="vidserve-upload")


class TransientError(Exception):
    """A dependency (Postgres, S3) failed in a way that a later retry may not."""


class SourceGone(Exception):
    """The job an extension continues, or what it kept (latents, MP4), no longer exists."""


@dataclass
class Attempt:
    """One claimed run of a job by this process: the lease it holds and what the engine reported."""

    ctx: WorkerContext
    job_id: str
    owner: str
    model: str = ""
    priority: int = DEFAULT_PRIORITY
    request_id: str = ""
    checkpoints: JobCheckpoints | None = None
    claimed_at: float = field(default_factory=time.monotonic)
    # The higher-priority job (and its lease owner) claimed to take over this slot at the next checkpoint.
    taker: tuple[Any, str] | None = None
    looked_at: float = 0.0
    progress: float = 0.0
    written_progress: float = 0.0
    renewed_at: float = field(default_factory=time.monotonic)
    cancel_requested: bool = False
    lease_lost: bool = False

    def on_progress(self, step: int, total: int) -> None:
        # Called on the engine's loop thread: record only, never touch the database here.
        if total > 0:
            self.progress = min(1.0, step / total)

    def maintain(self) -> None:
        """Write progress when it moved, renew the lease when due; learn about cancels and lost leases."""
        store, settings = self.ctx.store, self.ctx.settings
        try:
            flag: bool | None = None
            wrote = False
            if self.progress > self.written_progress:
                progress = self.progress
                flag = store.set_progress(self.job_id, self.owner, progress)
                self.written_progress, wrote = progress, True
            # Renew at a third of the lease's life, and at least every CANCEL_POLL_SECONDS while no progress
            # is written (a job waiting in the engine, a slow step), since the renewal reads the cancel flag too.
            due = settings.lease_seconds / 3 if wrote else min(settings.lease_seconds / 3, CANCEL_POLL_SECONDS)
            if time.monotonic() - self.renewed_at >= due:
                flag = store.renew_lease(self.job_id, self.owner, settings.lease_seconds)
                self.renewed_at, wrote = time.monotonic(), True
                if self.taker is not None:  # claimed, waiting for this job's next checkpoint
                    taker, taker_owner = self.taker
                    store.renew_lease(taker.id, taker_owner, settings.lease_seconds)
        except OperationalError:
            # A database blip: the lease has slack (renewed at a third of its life); try again next tick.
            log.warning("job %s: lease/progress write failed", self.job_id, exc_info=True)
            return
        if not wrote:
            return
        if flag is None:
            self.lease_lost = True
        elif flag:
            self.cancel_requested = True


def generate(ctx: WorkerContext, job_id: str, model: str | None = None) -> str:
    """Take the wake-up for `job_id` of `model`: claim the model's first job in the queue's order and run it start
    to finish; returns what happened (for logs and tests)."""
    if model is None:  # a message published before wake-ups named their model
        try:
            model = ctx.store.get(job_id).model
        except JobNotFound:
            log.warning("job %s: no such job, message dropped", job_id)
            return "skipped"
    if model not in ctx.engines.models:
        # Queues are per model, so this is a routing mistake: leave the job for a worker that serves it.
        log.error("job %s: model %s is not served here; left queued", job_id, model)
        return "not_served"
    if ctx.shutting_down.is_set():
        # A message that reached this worker on its way out (the job it just handed back, re-published): claiming
        # it would only hand it back again. The caller returns the message to the queue for another worker.
        log.info("job %s: not claimed, this worker is shutting down", job_id)
        return "declined"
    owner = ctx.new_owner()
    job = ctx.store.claim_next([model], owner, ctx.settings.lease_seconds)
    if job is None:
        # Nothing claimable (claim_next waits out other writers' row locks): the named job is running, finished or
        # canceled, and so is every other job of the model. A duplicate or spare wake-up.
        log.info("wake-up for job %s: no %s job waits; duplicate or stale delivery ignored", job_id, model)
        return "skipped"
    log.info("job %s: claimed by %s (attempt %d, model %s, woken by %s)", job.id, owner, job.attempts, model, job_id)
    if str(job.id) != str(job_id):
        _pass_on_wake_up(ctx, job_id, model)
    return _run_slot(ctx, job, owner)


def _pass_on_wake_up(ctx: WorkerContext, job_id: str, model: str) -> None:
    """This wake-up went to a fairer job: publish a new one for the job it named, if that job still waits.

    Without it a queued job whose wake-up was spent on another job waits for the other job's own message, and
    that message may be gone (consumed by a worker that stopped, or declined on the way out): the job would stay
    queued with nothing left to wake a worker for it. A spare wake-up finds nothing to claim and is dropped.
    """
    try:
        if ctx.store.get(job_id).status == JobStatus.QUEUED:
            announce_job(ctx.celery, ctx.store, job_id, model)
    except JobNotFound:
        pass


def _run_slot(ctx: WorkerContext, job: Any, owner: str) -> str:
    """Run the claimed job in this slot, then each job that took the slot over from the one before it; returns
    their outcomes, comma-separated ("preempted,succeeded")."""
    outcomes: list[str] = []
    taker: tuple[Any, str] | None = (job, owner)
    while taker is not None:
        job, owner = taker
        if outcomes and ctx.shutting_down.is_set():  # the worker stops: the taker waits for another one
            _give_back(ctx, job, owner, "worker shutdown")
            break
        attempt = Attempt(ctx, str(job.id), owner, model=job.model, priority=job.priority)
        try:
            outcomes.append(_run_claimed(attempt, job))
        except BaseException:
            if attempt.taker is not None:
                _give_back(ctx, *attempt.taker, "the slot it was to take over failed")
            raise
        taker = attempt.taker
    return ",".join(outcomes)


def _run_claimed(attempt: Attempt, job: Any) -> str:
    checkpoints = JobCheckpoints(attempt.ctx.videos, attempt.job_id)
    attempt.checkpoints = checkpoints
    outcome = "lost"
    with attempt.ctx.slots.running(attempt):
        try:
            outcome = _attempt(attempt, job, checkpoints)
            return outcome
        finally:
            if outcome in TERMINAL_OUTCOMES:
                checkpoints.discard()
            else:  # handed back or taken over: the next attempt resumes from the checkpoint
                checkpoints.close()


def _give_back(ctx: WorkerContext, job: Any, owner: str, reason: str) -> None:
    """A claimed job this slot will not run after all: back to the queue with a wake-up (or its lease expires)."""
    try:
        if ctx.store.release(job.id, owner, reason) is not None:
            announce_job(ctx.celery, ctx.store, job.id, job.model)
    except OperationalError:
        log.warning("job %s: could not hand it back; its lease will expire", job.id, exc_info=True)


def _look_for_taker(attempt: Attempt) -> None:
    """When every slot is busy and this job is the one to give way: claim the fairest waiting job of a higher
    priority to take over the slot at this job's next checkpoint. With checkpoints off nothing is preempted: the
    job would start over."""
    ctx, settings = attempt.ctx, attempt.ctx.settings
    now = time.monotonic()
    if (
        attempt.taker is not None
        or settings.checkpoint_every_steps <= 0
        or attempt.priority >= MAX_PRIORITY
        or now - attempt.looked_at < PREEMPT_LOOK_SECONDS
        or ctx.shutting_down.is_set()
    ):
        return
    attempt.looked_at = now
    if not ctx.slots.gives_way(attempt, ctx.slots.capacity or settings.worker_slots):
        return
    owner = ctx.new_owner()
    try:
        job = ctx.store.claim_next([attempt.model], owner, settings.lease_seconds, above_priority=attempt.priority)
    except OperationalError:
        log.warning("job %s: could not look for a job to give way to", attempt.job_id, exc_info=True)
        return
    if job is not None:
        attempt.taker = (job, owner)
        log.info(
            "job %s (priority %d) takes over the slot of job %s at its next checkpoint",
            job.id,
            job.priority,
            attempt.job_id,
        )


def _attempt(attempt: Attempt, job: Any, checkpoints: JobCheckpoints) -> str:
    """The claimed job: resolve, run (resuming from its checkpoint), store, record; returns the outcome."""
    ctx, job_id, owner = attempt.ctx, attempt.job_id, attempt.owner
    params = dict(job.params)
    extends = params.pop("extends", None)  # an extension's source: not a generation parameter
    context: Any = None  # an extension's starting latents
    original: bytes | None = None  # the MP4 an extension that includes its original starts with
    if extends is not None:
        try:
            context, original = _source_of(ctx, extends)
        except SourceGone as exc:
            ctx.store.fail(job_id, "source_unavailable", f"the video to extend is gone: {exc}", owner=owner)
            return "failed"
        except Exception as exc:  # the store failing: a later attempt may read them
            return _hand_back(attempt, job.model, job.attempts, "storage_unavailable", f"reading the source: {exc}")
    try:
        spec = ctx.registry.get(job.model)
        request = spec.resolve(str(job.id), params, context=context)
        engine = ctx.engines.get(job.model)
    except (InvalidRequest, ModelUnavailable) as exc:
        ctx.store.fail(job_id, exc.code, str(exc), owner=owner)
        return "failed"
    # A long video's frames go to the encoder as the engine decodes them, never held whole.
    stream = FrameStream() if request.is_long else None
    encoding = _encode_in_background(stream, original, request.fps) if stream is not None else None

    attempt.request_id = request.id
    # Only a job delivered before can have a checkpoint: a first attempt spares the store a lookup.
    resume = checkpoints.load() if job.attempts > 1 else None
    try:
        result = _run_engine(attempt, engine, request, checkpoints, resume, stream)
    except RequestCanceled:
        return _stopped(attempt, job.model)
    except EngineError as exc:
        if ctx.shutting_down.is_set():  # the engine closed under it: not the job's fault, queue it again
            return _stopped(attempt, job.model)
        log.warning("job %s: engine error %s: %s", job_id, exc.code, exc)
        ctx.store.fail(job_id, exc.code, str(exc), owner=owner)
        return "failed"
    except Exception as exc:  # an engine bug or an out-of-memory: this job's problem, not the slot's
        log.exception("job %s: engine crashed", job_id)
        if ctx.shutting_down.is_set():
            return _stopped(attempt, job.model)
        # Maybe transient (memory, a batch mate's fault): queue it again; a poison job fails after max_attempts.
        return _hand_back(attempt, job.model, job.attempts, "engine_error", f"{type(exc).__name__}: {exc}")
    if attempt.cancel_requested or attempt.lease_lost:
        # The cancel (or the takeover) raced the last step: honour it rather than publish a result.
        return _stopped(attempt, job.model)

    try:
        output, timings = _store_video(attempt, result, original, encoding)
    except TransientError as exc:
        return _hand_back(attempt, job.model, job.attempts, "storage_unavailable", str(exc))
    except ValueError as exc:
        ctx.store.fail(job_id, "encode_error", str(exc), owner=owner)
        return "failed"

    stats = {**result.stats.as_dict(), **timings, **checkpoints.stats()}
    return _record_success(attempt, output, stats)


def _source_of(ctx: WorkerContext, extends: dict[str, Any]) -> tuple[Any, bytes | None]:
    """An extension's context (its source job's kept final latents) and the source's MP4 when the new video
    includes it. SourceGone when the source job, or what it kept, was deleted since the extension was accepted."""
    try:
        source = ctx.store.get(extends["job_id"])
    except JobNotFound:
        raise SourceGone(f"job {extends['job_id']} was deleted") from None
    if source.output is None or not source.output.get("latents_key"):
        raise SourceGone(f"job {source.id} kept no latents")
    try:
        context = get_latents(ctx.videos, source.output["latents_key"])
    except LatentsMissing as exc:
        raise SourceGone(str(exc)) from None
    if not extends.get("include_original"):
        return context, None
    original = ctx.videos.get_if_exists(source.output["key"])
    if original is None:
        raise SourceGone(f"no video at {source.output['key']}")
    return context, original


def _encode_in_background(stream: FrameStream, original: bytes | None, fps: int) -> Future[EncodedVideo]:
    """Encode `stream` (after `original`'s frames) on a thread of its own while the engine decodes into it; a
    thread per stream, since it waits on the engine for as long as the job runs."""
    frames: Iterable[Any] = _chain(iter_mp4_frames(original), stream) if original is not None else stream
    future: Future[EncodedVideo] = Future()

    def encode() -> None:
        try:
            future.set_result(encode_mp4(frames, fps))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=encode, name="vidserve-encode", daemon=True).start()
    return future


def _record_success(attempt: Attempt, output: dict[str, Any], stats: dict[str, Any]) -> str:
    """Write `succeeded` with the stored video, retrying each second for `result_write_seconds` while the
    database is away. The write counts even if the sweeper re-queued the job meanwhile, until another worker
    claims it (`JobStore.succeed`): a retry at least every second beats the sweeper's re-publish and a claim."""
    ctx, job_id = attempt.ctx, attempt.job_id
    deadline = time.monotonic() + ctx.settings.result_write_seconds
    while True:
        try:
            done = ctx.store.succeed(job_id, attempt.owner, output, stats)
            break
        except OperationalError:
            wait = min(RESULT_WRITE_RETRY_SECONDS, deadline - time.monotonic())
            if wait <= 0:
                # The video is stored under its deterministic key; the sweeper queues the job again once the
                # lease expires and the rerun overwrites it. Never `succeeded` without the row naming the video.
                log.error("job %s: could not record success; leaving it to the sweeper", job_id)
                return "lost"
            log.warning("job %s: recording success failed, retrying in %.1fs", job_id, wait, exc_info=True)
            time.sleep(wait)
    if done is None:
        log.warning("job %s: another worker took the job over before success was recorded", job_id)
        return "lost"
    log.info("job %s: succeeded (%s)", job_id, stats)
    return "succeeded"


def _run_engine(
    attempt: Attempt,
    engine: Any,
    request: GenerationRequest,
    checkpoints: JobCheckpoints,
    resume: Any,
    stream: FrameStream | None = None,
) -> GenerationResult:
    """The engine's result; with `stream`, the frames went into it (closed at the end, aborted on an error)."""
    try:
        result = _run_to_result(attempt, engine, request, checkpoints, resume, stream)
    except BaseException:
        if stream is not None:
            stream.abort()
        raise
    if stream is not None:
        stream.close()
    return result


def _run_to_result(
    attempt: Attempt,
    engine: Any,
    request: GenerationRequest,
    checkpoints: JobCheckpoints,
    resume: Any,
    stream: FrameStream | None,
) -> GenerationResult:
    every = attempt.ctx.settings.checkpoint_every_steps

    def on_checkpoint(state: Any) -> None:  # on the engine's loop thread
        checkpoints.offer(state)
        if attempt.taker is not None:
            engine.cancel(request.id)  # stops here, between steps: the job resumes from this checkpoint's step

    options = dict(on_progress=attempt.on_progress, checkpoint_every=every, on_checkpoint=on_checkpoint)
    if stream is not None:
        options["on_frames"] = stream.put
    try:
        future: Future[GenerationResult] = engine.submit(request, resume_from=resume, **options)
    except CheckpointMismatch as exc:  # the job's parameters or the model changed since: start over
        log.warning("job %s: checkpoint not used (%s); starting from step 0", attempt.job_id, exc)
        future = engine.submit(request, **options)
    if resume is not None:
        log.info("job %s: resuming from step %d of %d", attempt.job_id, resume.step, resume.num_steps)
    stopping = False
    while True:
        try:
            return future.result(timeout=TICK_SECONDS)
        except FutureTimeout:
            pass
        attempt.maintain()
        _look_for_taker(attempt)
        if not stopping and (attempt.cancel_requested or attempt.lease_lost or attempt.ctx.shutting_down.is_set()):
            # False while the engine cannot stop it yet (e.g. between admission and its first step): ask again
            # next tick rather than let it run to the end.
            stopping = engine.cancel(request.id)


def _stopped(attempt: Attempt, model: str) -> str:
    """The request was stopped: canceled by the client, its lease lost, taken over by a job of a higher priority,
    or this worker shutting down."""
    ctx = attempt.ctx
    if attempt.cancel_requested:
        ctx.store.mark_canceled(attempt.job_id, attempt.owner)
        log.info("job %s: canceled", attempt.job_id)
        return "canceled"
    if attempt.lease_lost:
        log.warning("job %s: lease lost; another worker owns it now", attempt.job_id)
        return "lost"
    # Stopped without being asked (preempted, shutdown, engine closed): the job is not finished, queue it again,
    # once its last checkpoint is in the bucket, so the next attempt resumes from it.
    if attempt.checkpoints is not None:
        attempt.checkpoints.flush()
    reason = "worker shutdown" if attempt.taker is None else f"preempted by job {attempt.taker[0].id}"
    if ctx.store.release(attempt.job_id, attempt.owner, reason) is not None:
        announce_job(ctx.celery, ctx.store, attempt.job_id, model)
    log.info("job %s: handed back to the queue (%s)", attempt.job_id, reason)
    return "released" if attempt.taker is None else "preempted"


def _hand_back(attempt: Attempt, model: str, attempts: int, code: str, message: str) -> str:
    """A transient failure: queue the job again (the sweeper publishes it) or fail it after too many tries."""
    ctx = attempt.ctx
    try:
        if attempts >= ctx.settings.max_attempts:
            ctx.store.fail(attempt.job_id, code, message, owner=attempt.owner)
            log.error("job %s: failed after %d attempts: %s", attempt.job_id, attempts, message)
            return "failed"
        ctx.store.release(attempt.job_id, attempt.owner, f"{code}: {message}")
    except OperationalError:
        log.warning("job %s: could not hand the job back; its lease will expire", attempt.job_id, exc_info=True)
        return "lost"
    # Not re-published at once: the sweeper picks released jobs up after a short delay, a natural backoff.
    log.warning("job %s: handed back to the queue: %s", attempt.job_id, message)
    return "released"


def _store_video(
    attempt: Attempt,
    result: GenerationResult,
    original: bytes | None = None,
    encoding: Future[EncodedVideo] | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Encode and upload under the job's deterministic key, with the final latents beside it when the engine
    returned them; retries the uploads with backoff. `original`: an MP4 whose frames go first (an extension
    that includes the video it continues). `encoding`: the encoder the frames were streamed into."""
    started = time.perf_counter()
    if encoding is not None:
        video = _awaiting(attempt, encoding)
    else:
        frames: Iterable[Any] = result.frames
        if original is not None:
            frames = _chain(iter_mp4_frames(original), frames)
        # Off the slot's thread, which keeps the lease: a long video's encoding may outlast a third of it.
        video = _maintaining(attempt, lambda: encode_mp4(frames, result.fps))
    encoded = time.perf_counter()
    key = VideoStore.key_for(attempt.job_id)
    _retrying(attempt, lambda: attempt.ctx.videos.put(key, video.data, video.content_type), "upload")
    output = {
        "key": key,
        "content_type": video.content_type,
        "bytes": len(video.data),
        "num_frames": video.num_frames,
        "width": video.width,
        "height": video.height,
        "fps": video.fps,
    }
    latents = getattr(result, "latents", None)
    if latents is not None:
        output |= _retrying(attempt, lambda: put_latents(attempt.ctx.videos, attempt.job_id, latents), "upload")
    uploaded = time.perf_counter()
    return output, {"seconds_encoding": round(encoded - started, 4), "seconds_uploading": round(uploaded - encoded, 4)}


def _chain(*parts: Iterable[Any]) -> Iterable[Any]:
    for part in parts:
        yield from part


def _retrying(attempt: Attempt, call: Callable[[], T], what: str) -> T:
    """Run an upload while keeping the lease, retrying with backoff; TransientError when every try failed."""
    last_error: Exception | None = None
    settings = attempt.ctx.settings
    for delay in _backoff(settings.upload_tries, settings.upload_retry_seconds):
        try:
            return _maintaining(attempt, call)
        except Exception as exc:  # minio raises S3Error, urllib3 errors, OSError: all worth a retry
            last_error = exc
            if delay is None:
                break
            log.warning("job %s: %s failed (%s), retrying in %.1fs", attempt.job_id, what, exc, delay)
            _sleep_maintaining(attempt, delay)
    raise TransientError(f"{what} failed: {last_error}")


def _maintaining(attempt: Attempt, call: Callable[[], T]) -> T:
    """Run a blocking call (an upload: minio retries inside it, a big video takes long) while this thread keeps
    the lease alive; an upload longer than the lease must not let the sweeper hand the job to another worker."""
    return _awaiting(attempt, _io_pool.submit(call))


def _awaiting(attempt: Attempt, future: Future[T]) -> T:
    """The future's result, keeping the lease alive while it is not there yet."""
    while True:
        try:
            return future.result(timeout=TICK_SECONDS)
        except FutureTimeout:
            attempt.maintain()


def _sleep_maintaining(attempt: Attempt, seconds: float) -> None:
    # Keep the lease alive across a long retry wait, so no other worker takes the job meanwhile.
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(TICK_SECONDS, left))
        attempt.maintain()


def _backoff(tries: int, first: float) -> list[float | None]:
    """The waits after each of `tries` failures: `first`, twice that, four times ... seconds, then None (give up)."""
    return [first * 2**i for i in range(tries - 1)] + [None]
