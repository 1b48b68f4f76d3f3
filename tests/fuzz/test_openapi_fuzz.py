"""Schemathesis against the real app: requests generated from /openapi.json, valid and invalid alike.

Every answer must be documented (status, content type, headers, body schema), never a 5xx, and every job the
API accepts must be one its model can run: the stored row is re-validated against the model's limits.
`VIDSERVE_FUZZ_EXAMPLES` sets the random examples per operation (the suite: 30; `make fuzz`: 300).

Every operation also gets Schemathesis' coverage phase (boundary and wrong-type values of each field, methods the
path does not allow), except that the two submit operations get it only under `make fuzz`
(`VIDSERVE_FUZZ_COVERAGE=1`): for `POST /v1/jobs` it is about 3,500 requests, 1,000 of them creating a job, two
minutes of the suite's time. The suite sends them their examples and random examples like every operation, and
tests/api pins their validation field by field.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable

import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import positive_data_acceptance

from api.app import create_app
from api.services import EXTENSION, Services
from api.validation import WEBHOOK_URL_PATTERN, recorded_params
from vidserve.settings import Settings

EXAMPLES = int(os.environ.get("VIDSERVE_FUZZ_EXAMPLES", "30"))
SUBMITS = ["submitJob", "openaiCreateVideo"]
SUBMIT_COVERAGE = os.environ.get("VIDSERVE_FUZZ_COVERAGE") == "1"


def load_schema() -> schemathesis.BaseSchema:
    """The document as an app with the shipped registry serves it (building one opens no connection); the tests
    send to `fuzz_app`. The event stream stays open until its job ends (no worker runs here); the admin pages and
    /metrics are HTML and Prometheus text behind their own token, tested in tests/admin and tests/api."""
    loaded = schemathesis.openapi.from_wsgi("/openapi.json", create_app(Settings())).exclude(
        path_regex=r"^/admin|^/metrics$|/events$"
    )
    # Unknown query parameters are ignored, as HTTP APIs commonly do; the document does not forbid them either.
    loaded.config.generation.update(allow_extra_parameters=False)
    return loaded


# Two loads, each with a configuration of its own: the submits' phases change without touching the others'.
schema = load_schema().exclude(operation_id=SUBMITS)
submits = load_schema().include(operation_id=SUBMITS)
if not SUBMIT_COVERAGE:
    submits.config.phases.update(phases=["examples", "fuzzing"])
HYPOTHESIS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)


def accepted_jobs_are_runnable(svc: Services) -> Callable[..., None]:
    """A check: a 2xx submit stored a job whose params its model accepts as they are (within every limit)."""

    def check(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case) -> None:
        submit = case.operation.definition.raw.get("operationId") in SUBMITS and response.request.method == "POST"
        if not submit or not 200 <= response.status_code < 300:  # (checks also send other methods, e.g. OPTIONS)
            return
        job = svc.jobs.get(response.json()["id"])
        resolved = svc.registry.get(job.model).resolve(str(job.id), dict(job.params))
        assert recorded_params(resolved) == job.params, job.params

    return check


@schema.parametrize()
@HYPOTHESIS
def test_every_answer_is_documented_and_no_invalid_job_is_accepted(
    case: schemathesis.Case, fuzz_app: Flask, fuzz_auth: dict[str, str]
) -> None:
    call_and_check(case, fuzz_app, fuzz_auth)


@submits.parametrize()
@HYPOTHESIS
def test_every_submit_answer_is_documented_and_no_invalid_job_is_accepted(
    case: schemathesis.Case, fuzz_app: Flask, fuzz_auth: dict[str, str]
) -> None:
    call_and_check(case, fuzz_app, fuzz_auth)


def call_and_check(case: schemathesis.Case, fuzz_app: Flask, fuzz_auth: dict[str, str]) -> None:
    body = case.body if isinstance(case.body, dict) else {}
    webhook_url = body.get("webhook_url")
    if isinstance(webhook_url, str) and re.fullmatch(WEBHOOK_URL_PATTERN, webhook_url):
        # A well-formed URL must also resolve to an allowed address, which no schema can say (and resolving the
        # fuzzer's random host names would go to DNS): send the suite's loopback receiver address instead.
        body["webhook_url"] = "http://127.0.0.1:9/hook"
    key = (case.headers or {}).get("Idempotency-Key")
    if isinstance(key, str) and 1 <= len(key) <= 255:
        # The fuzzer repeats short keys with other bodies, which is (rightly) a 422: one key per request instead.
        case.headers["Idempotency-Key"] = uuid.uuid4().hex
    excluded = []
    if isinstance(body.get("segments"), list):
        # Segments start at strictly ascending frames, each below num_frames (whose default is the model's): rules
        # across values that JSON Schema cannot state, so a schema-valid list may still be refused (422 naming it).
        excluded.append(positive_data_acceptance)
    if case.path.startswith("/v1/videos"):
        # OpenAI's shapes: `seconds` and `size` are free strings whose ranges depend on the model and `after` must
        # name an existing video, so schema-valid requests may still be refused (400 naming the parameter).
        excluded.append(positive_data_acceptance)
    check = accepted_jobs_are_runnable(fuzz_app.extensions[EXTENSION])
    # A case made invalid in its headers may be one without the API key: the fuzzer's own headers go as they are.
    auth = {} if case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER) else fuzz_auth
    case.call_and_validate(app=fuzz_app, headers=auth, additional_checks=[check], excluded_checks=excluded)
