"""The admin dashboard on the real stack (API under gunicorn, worker, webhook sender), over HTTP and in a real
browser (Debian's headless Chromium via Selenium): sign-in, CSRF, search and filters, bulk cancel and retry, job
detail with a playing video, cancel from the UI, queues, workers (heartbeats), charts and webhook redelivery.
One module, so all of it shares one stack. Screenshots go to artifacts/admin/."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import requests
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from service_harness import GATED_JOB, GATED_STEPS, SERVED_MODEL, Stack, WebhookReceiver, held_at_gate, wait_until

from api.app import create_app
from worker.step_gate import StepGate

HTML = {"Accept": "text/html"}
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "admin"
WAIT = 30


def submit(stack: Stack, **body: Any) -> dict[str, Any]:
    response = requests.post(f"{stack.api_url}/v1/jobs", json={"model": SERVED_MODEL, **body}, timeout=10)
    assert response.status_code == 202, response.text
    return response.json()


def status_of(stack: Stack, job_id: str) -> str:
    return stack.store.get(job_id).status.value


@pytest.fixture(scope="module")
def admin(stack: Stack) -> requests.Session:
    session = requests.Session()
    login = {"token": stack.settings.admin_token}
    response = session.post(f"{stack.api_url}/admin/login", data=login, allow_redirects=False)
    assert response.status_code == 302 and response.headers["Location"].endswith("/admin/")
    cookie = next(c for c in session.cookies if c.name == "vidserve_admin")
    assert cookie.has_nonstandard_attr("HttpOnly") and cookie.path == "/admin"
    return session


def csrf(page: str) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)


def test_dashboard_is_locked_without_a_configured_token(stack: Stack) -> None:
    app = create_app(dataclasses.replace(stack.settings, admin_token=""))
    client = app.test_client()
    assert client.get("/admin/").status_code == 403
    assert client.post("/admin/login", data={"token": ""}).status_code == 403


def test_sign_in_is_required_and_checked(stack: Stack) -> None:
    anonymous = requests.get(f"{stack.api_url}/admin/", headers=HTML, allow_redirects=False, timeout=10)
    assert anonymous.status_code == 302 and "/admin/login" in anonymous.headers["Location"]
    assert requests.get(f"{stack.api_url}/admin/queues", timeout=10).status_code == 401
    wrong = requests.post(f"{stack.api_url}/admin/login", data={"token": "nope"}, allow_redirects=False, timeout=10)
    assert wrong.status_code == 401 and "wrong token" in wrong.text
    bearer = requests.get(
        f"{stack.api_url}/admin/charts.json", headers={"Authorization": f"Bearer {stack.settings.admin_token}"}
    )
    assert bearer.status_code == 200
    login = {"token": stack.settings.admin_token, "next": "https://evil.example/"}
    offsite = requests.post(f"{stack.api_url}/admin/login", data=login, allow_redirects=False, timeout=10)
    assert offsite.headers["Location"].endswith("/admin/")


def test_jobs_list_search_and_filters(stack: Stack, admin: requests.Session) -> None:
    job = submit(stack, prompt="a zebra crossing a glacier")
    other = submit(stack, prompt="an ordinary street")
    page = admin.get(f"{stack.api_url}/admin/", params={"q": "ZEBRA cross"}).text
    assert job["id"] in page and other["id"] not in page
    by_id = admin.get(f"{stack.api_url}/admin/", params={"q": job["id"][:8]}).text
    assert job["id"] in by_id and other["id"] not in by_id
    everything = admin.get(f"{stack.api_url}/admin/").text
    assert everything.index(other["id"]) < everything.index(job["id"]), "newest first"
    wait_until(lambda: status_of(stack, job["id"]) == "succeeded", 60, 0.1, "job succeeded")
    failed_only = admin.get(f"{stack.api_url}/admin/", params={"status": "failed", "model": SERVED_MODEL}).text
    assert job["id"] not in failed_only
    future = admin.get(f"{stack.api_url}/admin/", params={"since": "2999-01-01T00:00"}).text
    assert "no jobs match" in future


def test_bulk_cancel_needs_csrf_then_cancels_and_bulk_retry_makes_new_jobs(
    stack: Stack, admin: requests.Session, gated_jobs: StepGate
) -> None:
    jobs = [submit(stack, **GATED_JOB) for _ in range(2)]  # never released: unfinished until canceled
    ids = [j["id"] for j in jobs]
    forged = admin.post(f"{stack.api_url}/admin/jobs/bulk", data={"action": "cancel", "ids": ids})
    assert forged.status_code == 403
    token = csrf(admin.get(f"{stack.api_url}/admin/").text)
    done = admin.post(f"{stack.api_url}/admin/jobs/bulk", data={"action": "cancel", "ids": ids, "csrf": token})
    assert done.status_code == 200 and "canceled 2 job(s)" in done.text
    for job_id in ids:
        wait_until(lambda job_id=job_id: status_of(stack, job_id) == "canceled", 60, 0.1, "canceled")

    retried = admin.post(f"{stack.api_url}/admin/jobs/bulk", data={"action": "retry", "ids": ids[:1], "csrf": token})
    assert "retried 1 job(s)" in retried.text
    newest = stack.store.list(limit=1)[0]
    assert str(newest.id) not in ids and newest.params == stack.store.get(ids[0]).params
    requests.post(f"{stack.api_url}/v1/jobs/{newest.id}/cancel", timeout=10)  # it waits at the gate: free its slot


def test_job_detail_shows_timeline_stats_deliveries_and_redeliver_resends(
    stack: Stack, admin: requests.Session, receiver: WebhookReceiver
) -> None:
    job = submit(stack, prompt="a hummingbird", webhook_url=receiver.url("/hooks/admin"))
    wait_until(lambda: status_of(stack, job["id"]) == "succeeded", 60, 0.1, "job succeeded")
    receiver.wait_for("/hooks/admin", lambda got: any(r.json["type"] == "job.succeeded" for r in got))
    page = admin.get(f"{stack.api_url}/admin/jobs/{job['id']}").text
    for text in (
        "job.queued",
        "job.running",
        "job.succeeded",
        "steps computed",
        "batch sizes seen",
        "<video",
        "delivered",
        "Redeliver",
        "a hummingbird",
    ):
        assert text in page, text
    delivery = stack.store.events(job["id"])  # the timeline rows exist in Postgres too
    assert [e.type for e in delivery][:2] == ["job.queued", "job.running"]

    succeeded = [r for r in receiver.at("/hooks/admin") if r.json["type"] == "job.succeeded"]
    delivery_id = succeeded[0].headers["webhook-id"]
    response = admin.post(
        f"{stack.api_url}/admin/deliveries/{delivery_id}/redeliver", data={"csrf": csrf(page), "job_id": job["id"]}
    )
    assert "queued for redelivery" in response.text
    again = receiver.wait_for("/hooks/admin", lambda got: sum(r.headers["webhook-id"] == delivery_id for r in got) == 2)
    # The same event under the same id; only the video link is presigned again at each attempt (it expires).
    assert without_link(again[-1].json) == without_link(succeeded[0].json), "a redelivery sends the same event"
    assert again[-1].json["data"]["output"]["url"]


def test_a_job_that_asks_gets_progress_webhooks_from_the_real_worker(stack: Stack, receiver: WebhookReceiver) -> None:
    hook = receiver.url("/hooks/progress")
    job = submit(
        stack,
        prompt="a slow sunrise",
        num_inference_steps=400,
        webhook_url=hook,
        webhook_events=["job.progress", "job.succeeded"],
    )
    got = receiver.wait_for("/hooks/progress", lambda got: any(r.json["type"] == "job.succeeded" for r in got), 90)
    types = [r.json["type"] for r in got]
    progress = [r.json["data"]["progress"] for r in got if r.json["type"] == "job.progress"]
    assert types[-1] == "job.succeeded" and "job.running" not in types
    assert progress and progress == sorted(progress) and all(0 < p <= 1 for p in progress), progress
    # Throttled by tenths: never more than one event per tenth of progress.
    assert len({int(p * 10) for p in progress}) == len(progress)
    assert stack.store.get(job["id"]).status.value == "succeeded"


def test_queues_workers_and_charts(stack: Stack, admin: requests.Session) -> None:
    queues = admin.get(f"{stack.api_url}/admin/queues").text
    assert SERVED_MODEL in queues and "tiny-cogvideox" in queues

    def worker_row() -> str | None:
        page = admin.get(f"{stack.api_url}/admin/workers").text
        return page if SERVED_MODEL in page else None

    workers = wait_until(worker_row, 15, 0.2, "a worker heartbeat")
    assert "/ 4" in workers and "webhooks" in workers  # the generation worker's four slots; the webhook sender
    data = admin.get(f"{stack.api_url}/admin/charts.json", params={"range": "hour"}).json()
    assert len(data["labels"]) >= 60 and sum(data["finished_per_minute"]) > 0
    assert sum(data["batch_sizes"]["forwards"]) > 0 and data["batch_sizes"]["sizes"][0] >= 1
    assert any(v is not None for v in data["run_p95"])
    assert admin.get(f"{stack.api_url}/admin/charts.json", params={"range": "day"}).status_code == 200
    assert admin.get(f"{stack.api_url}/admin/charts.json", params={"range": "year"}).status_code == 400


# ---- in the browser ----------------------------------------------------------------------------------


def sign_in(driver: Any, stack: Stack) -> None:
    driver.get(f"{stack.api_url}/admin/")
    assert "/admin/login" in driver.current_url  # the dashboard is not open to anyone
    driver.find_element(By.ID, "token").send_keys(stack.settings.admin_token)
    driver.find_element(By.ID, "sign-in").click()
    WebDriverWait(driver, WAIT).until(lambda d: d.find_elements(By.ID, "jobs"))


def test_submitted_job_appears_and_its_video_plays(stack: Stack, browser: Any) -> None:
    job = submit(stack, prompt="a red kite over green hills", width=96, height=64, num_frames=17, seed=3)
    sign_in(browser, stack)
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-job-id="{job["id"]}"]')
    assert "a red kite over green hills" in row.text

    wait_until(lambda: stack.store.get(job["id"]).status.value == "succeeded", 60, 0.1, "job succeeded")
    browser.get(f"{stack.api_url}/admin/jobs/{job['id']}")
    assert browser.find_element(By.ID, "job-status").text == "succeeded"
    # HAVE_CURRENT_DATA (2) or better, a duration of 17 frames at 8 fps, no media error, and time moving.
    state = WebDriverWait(browser, WAIT).until(
        lambda d: d.execute_script(
            "const v = document.getElementById('video');"
            "return v && v.readyState >= 2 && v.duration > 0 && !v.error"
            " ? {ready: v.readyState, duration: v.duration, w: v.videoWidth, h: v.videoHeight} : null;"
        )
    )
    assert abs(state["duration"] - 17 / 8) < 0.2 and (state["w"], state["h"]) == (96, 64), state
    browser.execute_script("document.getElementById('video').play()")
    playing = "return document.getElementById('video').currentTime > 0"
    WebDriverWait(browser, WAIT).until(lambda d: d.execute_script(playing))
    timeline = browser.find_element(By.ID, "timeline").text
    assert "job.queued" in timeline and "job.succeeded" in timeline
    browser.save_screenshot(str(ARTIFACTS / "job-detail.png"))


def test_cancel_from_the_ui_cancels_a_running_job(stack: Stack, browser: Any, gated_jobs: StepGate) -> None:
    job = submit(stack, **GATED_JOB)
    wait_until(lambda: held_at_gate(stack.store, job["id"], GATED_STEPS), 60, 0.1, "job running, held at the gate")
    browser.get(f"{stack.api_url}/admin/jobs/{job['id']}")
    browser.find_element(By.ID, "cancel").click()
    WebDriverWait(browser, WAIT).until(lambda d: d.find_elements(By.ID, "message"))
    assert "cancel" in browser.find_element(By.ID, "message").text
    wait_until(lambda: stack.store.get(job["id"]).status.value == "canceled", 60, 0.1, "job canceled")
    # The page reloads itself while the job is unfinished, so it shows the final state on its own.
    WebDriverWait(browser, WAIT).until(lambda d: d.find_element(By.ID, "job-status").text == "canceled")
    assert stack.store.get(job["id"]).status.value == "canceled"


def test_jobs_workers_and_charts_pages_render(stack: Stack, browser: Any) -> None:
    browser.get(f"{stack.api_url}/admin/")
    browser.save_screenshot(str(ARTIFACTS / "jobs.png"))
    browser.get(f"{stack.api_url}/admin/workers")
    WebDriverWait(browser, WAIT).until(lambda d: SERVED_MODEL in d.find_element(By.ID, "workers").text)
    browser.save_screenshot(str(ARTIFACTS / "workers.png"))
    browser.get(f"{stack.api_url}/admin/charts")
    # charts.js marks the container once Chart.js (vendored, same origin) has drawn every chart.
    WebDriverWait(browser, WAIT).until(lambda d: d.find_element(By.ID, "charts").get_attribute("data-ready") == "1")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    browser.save_screenshot(str(ARTIFACTS / "charts.png"))


def without_link(event: dict[str, Any]) -> dict[str, Any]:
    """A webhook event without its succeeded job's presigned video link, which each attempt signs anew."""
    output = {k: v for k, v in event["data"]["output"].items() if k not in ("url", "expires_at")}
    return {**event, "data": {**event["data"], "output": output}}
