"""The admin dashboard (`/admin`): jobs, job detail, queues, workers and charts, rendered server-side.

Locked unless `VIDSERVE_ADMIN_TOKEN` is set. A browser signs in with the token and gets a signed cookie;
scripts send `Authorization: Bearer <token>`, or an API key with the `admin` scope (which works even while
the dashboard is locked). Every form POST carries a CSRF token bound to the cookie.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, abort, g, jsonify, redirect, render_template, request, url_for
from itsdangerous import BadSignature, URLSafeTimedSerializer

from api.admin import queries
from api.errors import RateLimited
from api.query import integer_parameter, text_parameter
from api.rate_limit import ADMIN_LOGIN_ATTEMPTS_PER_MINUTE, check_admin_login_rate
from api.services import services
from vidserve.heartbeats import read_heartbeats
from vidserve.jobs import PRIORITY_NAMES, JobConflict, JobNotFound
from vidserve.schema import JobStatus

bp = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates", static_folder="static")

COOKIE = "vidserve_admin"
SESSION_SECONDS = 12 * 3600
# Far past any real job table's last page, and small enough that its row offset stays a Postgres bigint.
MAX_PAGE = 10**9


def _token() -> str:
    return services().settings.admin_token


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(_token(), salt="vidserve-admin")


def _csrf_for(cookie: str) -> str:
    return hmac.new(_token().encode(), b"csrf:" + cookie.encode(), hashlib.sha256).hexdigest()


def _authenticated() -> str | None:
    """'bearer' or 'cookie' when the request carries the admin credential (or an `admin` API key), else None."""
    token = _token()
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        # A bearer is a sign-in attempt too: a throttled address's is not compared (a guess learns nothing), a
        # wrong one counts, so the sign-in form's limit cannot be bypassed through the header.
        check_admin_login_rate(count=False)
        bearer = header[7:].strip()
        if token and hmac.compare_digest(bearer.encode(), token.encode()):
            g.admin_actor = "admin token"
            return "bearer"
        key = services().keys.verify(bearer)
        if key is not None and "admin" in key.scopes:
            g.admin_actor = f"admin key {key.id} ({key.name})"
            return "bearer"
        check_admin_login_rate()
    cookie = request.cookies.get(COOKIE)
    if cookie and token:
        try:
            _serializer().loads(cookie, max_age=SESSION_SECONDS)
            g.admin_actor = "admin dashboard session"
            return "cookie"
        except BadSignature:
            return None
    return None


def admin_required(view: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        how = _authenticated()
        if how is None and not _token():
            return render_template("admin/locked.html"), 403
        if how is None:
            if request.method == "GET" and "text/html" in request.headers.get("Accept", ""):
                return redirect(url_for("admin.login", next=request.full_path))
            return jsonify(error={"code": "unauthorized", "message": "admin credential required"}), 401
        # A cookie rides along with cross-site requests; a form POST must prove it came from our page.
        if request.method == "POST" and how == "cookie":
            sent = request.form.get("csrf", "")
            if not hmac.compare_digest(sent, _csrf_for(request.cookies[COOKIE])):
                abort(403, "CSRF token missing or wrong; reload the page")
        return view(*args, **kwargs)

    return wrapped


@bp.app_template_global()
def csrf_token() -> str:
    cookie = request.cookies.get(COOKIE)
    return _csrf_for(cookie) if cookie else ""


@bp.app_template_filter("when")
def _when(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "—"


@bp.app_template_filter("age")
def _age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@bp.app_template_filter("filesize")
def _filesize(n: int | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# ---- sign in -------------------------------------------------------------------------------------------


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if not _token():
        return render_template("admin/locked.html"), 403
    target = request.values.get("next") or url_for("admin.jobs")
    if not target.startswith("/admin"):  # never redirect off-site after sign-in
        target = url_for("admin.jobs")
    error = None
    if request.method == "POST":
        try:
            check_admin_login_rate()  # before the token is compared: a throttled guess learns nothing
        except RateLimited as limited:
            if "text/html" not in request.headers.get("Accept", ""):
                raise  # a script: the JSON error
            return render_template("admin/login.html", next=target, error=limited.message), 429
        if hmac.compare_digest(request.form.get("token", "").encode(), _token().encode()):
            response = redirect(target)
            response.set_cookie(
                COOKIE,
                _serializer().dumps(uuid.uuid4().hex),
                max_age=SESSION_SECONDS,
                httponly=True,
                samesite="Strict",
                secure=request.is_secure,
                path="/admin",
            )
            return response
        error = "wrong token"
    return render_template("admin/login.html", next=target, error=error), 401 if error else 200


@bp.post("/logout")
@admin_required
def logout() -> Response:
    response = redirect(url_for("admin.login"))
    response.delete_cookie(COOKIE, path="/admin")
    return response


# ---- jobs ----------------------------------------------------------------------------------------------


def _parse_time(value: str) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)  # the form's times are UTC


@bp.get("/")
@admin_required
def jobs() -> str:
    svc = services()
    args = request.args
    status = args.get("status", "")
    f = queries.JobFilter(
        status=status if status in {s.value for s in JobStatus} else "",
        model=text_parameter(args, "model"),
        since=_parse_time(args.get("since", "")),
        until=_parse_time(args.get("until", "")),
        q=text_parameter(args, "q").strip()[:200],
        page=integer_parameter(args, "page", 1, 1, MAX_PAGE),
    )
    page = queries.search_jobs(svc, f)
    keep = {k: v for k, v in args.items() if k != "page" and v}

    def page_url(n: int) -> str:
        return url_for("admin.jobs") + "?" + urlencode({**keep, "page": n})

    return render_template(
        "admin/jobs.html",
        page=page,
        f=f,
        args=args,
        statuses=[s.value for s in JobStatus],
        models=svc.registry.names(),
        page_url=page_url,
        message=args.get("msg"),
    )


@bp.post("/jobs/bulk")
@admin_required
def bulk() -> Response:
    svc = services()
    ids = request.form.getlist("ids")
    action = request.form.get("action")
    if action == "cancel":
        done, problems = queries.cancel_jobs(svc, ids)
        msg = f"canceled {done} job(s)"
    elif action == "retry":
        created, problems = queries.retry_jobs(svc, ids, g.admin_actor)
        msg = f"retried {len(created)} job(s) as new jobs"
    else:
        abort(400, "action must be cancel or retry")
    if problems:
        msg += "; skipped: " + "; ".join(problems[:5])
    return redirect(url_for("admin.jobs", msg=msg))


@bp.get("/jobs/<job_id>")
@admin_required
def job_detail(job_id: str) -> Any:
    svc = services()
    try:
        job = svc.jobs.get(job_id)
    except JobNotFound:
        abort(404, f"no job {job_id}")
    video_url = None
    if job.status == JobStatus.SUCCEEDED and job.output and svc.videos is not None:
        video_url, _ = svc.videos.presigned_url(job.output["key"])
    return render_template(
        "admin/job.html",
        job=job,
        events=svc.jobs.events(job.id),
        deliveries=queries.deliveries(svc, job.id),
        video_url=video_url,
        place=svc.jobs.queue_place(job),
        priority=PRIORITY_NAMES.get(job.priority, "normal"),
        retryable=job.status in queries.RETRYABLE,
        message=request.args.get("msg"),
    )


@bp.get("/jobs/<job_id>.json")
@admin_required
def job_json(job_id: str) -> Response:
    svc = services()
    return jsonify(svc.view_job(svc.jobs.get(job_id)))


@bp.post("/jobs/<job_id>/cancel")
@admin_required
def cancel(job_id: str) -> Response:
    svc = services()
    try:
        job = svc.jobs.cancel(job_id)
        msg = "canceled" if job.status == JobStatus.CANCELED else "cancel requested; it stops at its next step"
    except JobConflict as e:
        msg = f"not canceled: {e}"
    return redirect(url_for("admin.job_detail", job_id=job_id, msg=msg))


@bp.post("/jobs/<job_id>/retry")
@admin_required
def retry(job_id: str) -> Response:
    svc = services()
    try:
        new = queries.retry_job(svc, job_id, g.admin_actor)
    except JobConflict as e:
        return redirect(url_for("admin.job_detail", job_id=job_id, msg=f"not retried: {e}"))
    return redirect(url_for("admin.job_detail", job_id=new.id, msg=f"retry of {job_id}"))


@bp.post("/deliveries/<delivery_id>/redeliver")
@admin_required
def redeliver(delivery_id: str) -> Response:
    job_id = request.form.get("job_id", "")
    ok = queries.redeliver(services(), delivery_id)
    msg = "webhook queued for redelivery" if ok else "no such delivery"
    if job_id:
        return redirect(url_for("admin.job_detail", job_id=job_id, msg=msg))
    return redirect(url_for("admin.jobs", msg=msg))


# ---- fleet ---------------------------------------------------------------------------------------------


@bp.get("/queues")
@admin_required
def queues() -> str:
    return render_template("admin/queues.html", queues=queries.queues(services()))


@bp.get("/workers")
@admin_required
def workers() -> str:
    return render_template("admin/workers.html", workers=read_heartbeats(services().settings))


@bp.get("/charts")
@admin_required
def charts() -> str:
    range_name = request.args.get("range", "hour")
    if range_name not in queries.RANGES:
        range_name = "hour"
    return render_template("admin/charts.html", range=range_name, ranges=list(queries.RANGES))


@bp.get("/charts.json")
@admin_required
def charts_json() -> Response:
    range_name = request.args.get("range", "hour")
    if range_name not in queries.RANGES:
        abort(400, f"range must be one of: {', '.join(queries.RANGES)}")
    return jsonify(queries.chart_series(services(), range_name))


# ---- OpenAPI fragment (merged into /openapi.json by api.openapi): HTML pages and form posts ------------


def _page(
    operation_id: str,
    summary: str,
    params: tuple[str, ...] = (),
    method: str = "get",
    query: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    ok = "302" if method == "post" else "200"
    path_params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params]
    query_params = [{"name": name, "in": "query", "schema": schema} for name, schema in (query or {}).items()]
    return {
        "operationId": operation_id,
        "summary": summary,
        "tags": ["admin"],
        "parameters": path_params + query_params,
        "responses": {
            ok: {"description": "the page (HTML)" if ok == "200" else "redirect back to a page"},
            "401": {
                "description": "no admin credential (browsers are redirected to the sign-in page)",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            },
            "429": {
                "description": f"a Bearer credential after {ADMIN_LOGIN_ATTEMPTS_PER_MINUTE} wrong ones (or sign-in"
                " attempts) from this address in a minute (`rate_limited`)",
                "headers": {"Retry-After": {"required": True, "schema": {"type": "integer", "minimum": 1}}},
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            },
        },
    }


OPENAPI_PATHS: dict[str, Any] = {
    "/admin/": {
        "get": _page(
            "adminJobs",
            "Admin: jobs, filtered and paged",
            query={
                "page": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
                "status": {"type": "string"},
                "model": {"type": "string"},
                "since": {"type": "string", "description": "UTC, ISO 8601"},
                "until": {"type": "string", "description": "UTC, ISO 8601"},
                "q": {"type": "string", "description": "a prompt substring or a job id"},
            },
        )
    },
    "/admin/login": {
        "get": _page("adminLoginForm", "Admin: sign-in form"),
        "post": _page("adminLogin", "Admin: sign in with VIDSERVE_ADMIN_TOKEN (sets a cookie)", method="post"),
    },
    "/admin/logout": {"post": _page("adminLogout", "Admin: sign out", method="post")},
    "/admin/jobs/bulk": {"post": _page("adminBulk", "Admin: cancel or retry the selected jobs", method="post")},
    "/admin/jobs/{job_id}": {"get": _page("adminJob", "Admin: a job's detail page", ("job_id",))},
    "/admin/jobs/{job_id}.json": {"get": _page("adminJobJson", "Admin: a job as JSON", ("job_id",))},
    "/admin/jobs/{job_id}/cancel": {"post": _page("adminCancel", "Admin: cancel a job", ("job_id",), "post")},
    "/admin/jobs/{job_id}/retry": {
        "post": _page("adminRetry", "Admin: run a failed or canceled job again as a new job", ("job_id",), "post")
    },
    "/admin/deliveries/{delivery_id}/redeliver": {
        "post": _page("adminRedeliver", "Admin: send a webhook delivery again", ("delivery_id",), "post")
    },
    "/admin/queues": {"get": _page("adminQueues", "Admin: queue depth and oldest waiting job per model")},
    "/admin/workers": {"get": _page("adminWorkers", "Admin: live workers from their heartbeats")},
    "/admin/charts": {"get": _page("adminCharts", "Admin: charts page")},
    "/admin/charts.json": {
        "get": _page(
            "adminChartsJson",
            "Admin: the charts' series (last hour or day)",
            query={"range": {"type": "string", "enum": list(queries.RANGES)}},
        )
    },
    "/admin/static/{filename}": {
        "get": {
            "operationId": "adminStatic",
            "summary": "Admin: CSS, scripts and the vendored Chart.js",
            "tags": ["admin"],
            "parameters": [{"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "the file"}},
        }
    },
}
# The answers only some pages give: a bad page number, a throttled sign-in; the sign-in form is open to all.
del OPENAPI_PATHS["/admin/login"]["get"]["responses"]["429"]
OPENAPI_PATHS["/admin/"]["get"]["responses"]["422"] = {
    "description": "a query parameter is invalid (`invalid_field` naming it)",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
OPENAPI_PATHS["/admin/login"]["post"]["responses"]["429"] = {
    "description": f"more than {ADMIN_LOGIN_ATTEMPTS_PER_MINUTE} sign-in attempts from this address in a minute"
    " (`rate_limited`; a browser gets the sign-in page saying so)",
    "headers": {"Retry-After": {"required": True, "schema": {"type": "integer", "minimum": 1}}},
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
