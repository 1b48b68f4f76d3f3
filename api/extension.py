"""Extending a finished video: the source job's checks and the new job's parameters.

An extension is an ordinary job whose params also say which job it continues (`params["extends"]`); the
worker hands the source's kept final latents to the engine as context. Frame size, frame rate and model are
the source's, since the new frames continue its latents.
"""

from __future__ import annotations

from typing import Any

from api.errors import InvalidField, JobNotSucceeded, LatentsUnavailable
from api.validation import JOB_FIELDS, JobSubmission, parse_submission
from engine.registry import ModelRegistry
from vidserve.schema import Job, JobStatus

# Fixed by the source: the continuation's latents must have its shape, its model and its frame rate.
INHERITED_FIELDS = ("model", "height", "width", "fps")
# Taken from the source unless the extension names them, so "more of the same" needs only a prompt.
DEFAULTED_FIELDS = ("negative_prompt", "num_inference_steps", "guidance_scale")
EXTEND_FIELDS = tuple(name for name in JOB_FIELDS if name not in INHERITED_FIELDS) + ("include_original",)
# Stands in for the source's latents, which only the worker loads: resolving with a context makes the request a
# continuation, so the job's params record the long-video settings it will run with.
PENDING_CONTEXT = object()


def check_extendable(source: Job) -> None:
    """Raise a 409 unless `source` finished with a video and kept its final latents."""
    if source.status != JobStatus.SUCCEEDED or not source.output:
        raise JobNotSucceeded(
            f"job {source.id} is {source.status.value}; a video can be extended once its job has succeeded"
        )
    if not source.output.get("latents_key"):
        raise LatentsUnavailable(
            f"job {source.id} kept no latents to continue from (it finished before vidserve kept them); "
            "only videos made since can be extended"
        )


def parse_extension(body: dict[str, Any], source: Job, registry: ModelRegistry) -> JobSubmission:
    """The new job continuing `source`: the client's fields over the source's, checked like any submit."""
    for name in body:
        if name in INHERITED_FIELDS:
            raise InvalidField(name, "is the source video's; an extension keeps its model, size and frame rate")
        if name not in EXTEND_FIELDS:
            raise InvalidField(name, "unknown field")
    include_original = body.get("include_original")
    if include_original is None:
        include_original = False
    if not isinstance(include_original, bool):
        raise InvalidField("include_original", "must be a boolean")
    inherited = {name: source.params[name] for name in INHERITED_FIELDS[1:] if name in source.params}
    defaulted = {name: source.params[name] for name in DEFAULTED_FIELDS if source.params.get(name) is not None}
    fields = {k: v for k, v in body.items() if k != "include_original"}
    body = {"model": source.model, **defaulted, **fields, **inherited}
    submission = parse_submission(body, registry, context=PENDING_CONTEXT)
    extends = {"job_id": str(source.id), "include_original": include_original}
    return JobSubmission(
        job_id=submission.job_id,
        model=submission.model,
        params={**submission.params, "extends": extends},
        webhook_url=submission.webhook_url,
        metadata=submission.metadata,
        webhook_events=submission.webhook_events,
        priority=submission.priority,
    )
