"""The client half of the `vidserve` command: `submit`, `extend`, `status`, `cancel` and `list` over the public API.

The API's base URL comes from `--api` or `VIDSERVE_API_URL` (default http://127.0.0.1:8000), the API key from
`--api-key` or `VIDSERVE_API_KEY`; nothing here
touches the database or the queue, so these commands work from any machine that can reach the API.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from vidserve.tools.client import ApiError, VidserveClient


def _client(args: argparse.Namespace) -> VidserveClient:
    return VidserveClient(args.api, api_key=args.api_key)


def _print_job(job: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(job, indent=2))
        return
    line = f"{job['id']}  {job['status']:9s}  {job['model']:16s}  {round(100 * job.get('progress', 0)):3d}%"
    print(line)
    if job.get("error"):
        print(f"  error: {job['error']['code']}: {job['error']['message']}")
    if job.get("output"):
        print(f"  video: {job['output']['url']}")


def _cmd_submit(args: argparse.Namespace) -> int:
    client = _client(args)
    width = height = None
    if args.size:
        try:
            width, height = (int(x) for x in args.size.lower().split("x"))
        except ValueError:
            print("--size must be WIDTHxHEIGHT, e.g. 32x32", file=sys.stderr)
            return 2
    job = client.submit(
        args.model,
        args.prompt,
        negative_prompt=args.negative_prompt,
        num_frames=args.frames,
        width=width,
        height=height,
        num_inference_steps=args.steps,
        seed=args.seed,
        webhook_url=args.webhook_url,
        idempotency_key=args.idempotency_key,
    )
    return _follow(client, job, args)


def _cmd_extend(args: argparse.Namespace) -> int:
    """A new job continuing a succeeded one; `--seconds` becomes the model's nearest frame count (as the
    OpenAI-shaped API rounds `seconds`), at the source's frame rate."""
    client = _client(args)
    frames = args.frames
    if args.seconds is not None:
        source = client.get(args.job_id)
        model = next(m for m in client.models() if m["name"] == source["model"])
        multiple = int(model["limits"]["frame_rule"].split("k")[0])
        fps = source["params"].get("fps") or model["defaults"]["fps"]
        frames = multiple * max(0, math.floor((args.seconds * fps - 1) / multiple + 0.5)) + 1
    job = client.extend(
        args.job_id,
        args.prompt,
        num_frames=frames,
        num_inference_steps=args.steps,
        seed=args.seed,
        include_original=True if args.include_original else None,
        idempotency_key=args.idempotency_key,
    )
    return _follow(client, job, args)


def _follow(client: VidserveClient, job: dict[str, Any], args: argparse.Namespace) -> int:
    """After a submit or extend: print the id, or wait with a progress bar and download with `--out`."""
    if not args.wait and not args.out:
        _print_job(job, args.json) if args.json else print(job["id"])
        return 0
    print(f"job {job['id']} queued", file=sys.stderr)
    job = _wait_with_bar(client, job["id"])
    if args.out and job["status"] == "succeeded":
        size = client.download(job, args.out)
        print(f"wrote {args.out} ({size} bytes)", file=sys.stderr)
    _print_job(job, args.json)
    return 0 if job["status"] == "succeeded" else 1


def _wait_with_bar(client: VidserveClient, job_id: str) -> dict[str, Any]:
    from tqdm import tqdm

    # The bar goes to stderr, so `--json` output on stdout stays parseable.
    with tqdm(total=100, unit="%", file=sys.stderr, bar_format="{desc} {bar} {n:.0f}% [{elapsed}]") as bar:

        def update(data: dict[str, Any]) -> None:
            bar.set_description_str(f"{data['status']:9s}")
            bar.n = round(100 * (data.get("progress") or 0.0))
            bar.refresh()

        return client.wait(job_id, on_update=update)


def _cmd_status(args: argparse.Namespace) -> int:
    _print_job(_client(args).get(args.job_id), args.json)
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    job = _client(args).cancel(args.job_id)
    _print_job(job, args.json)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    page = _client(args).list(status=args.status, model=args.model, limit=args.limit, cursor=args.cursor)
    if args.json:
        print(json.dumps(page, indent=2))
        return 0
    for job in page["data"]:
        created = (job.get("created_at") or "")[:19].replace("T", " ")
        prompt = job["params"].get("prompt", "")
        prompt = prompt if len(prompt) <= 40 else prompt[:39] + "…"
        print(f"{job['id']}  {job['status']:9s}  {job['model']:16s}  {created}  {prompt}")
    if page.get("next_cursor"):
        print(f"more: --cursor {page['next_cursor']}", file=sys.stderr)
    return 0


def _guarded(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except ApiError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except OSError as e:  # connection refused, DNS, a file that cannot be written
            print(f"error: {e}", file=sys.stderr)
            return 1

    return run


def register(sub: Any) -> None:
    """Add the client subcommands to the `vidserve` parser's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--api", help="API base URL (default: $VIDSERVE_API_URL or http://127.0.0.1:8000)")
    common.add_argument("--api-key", help="API key sent as a bearer token (default: $VIDSERVE_API_KEY)")
    common.add_argument("--json", action="store_true", help="print the job(s) as JSON")

    submit = sub.add_parser("submit", parents=[common], help="submit a job (optionally wait and download it)")
    submit.add_argument("prompt")
    submit.add_argument("--model", help="a registered model (default: the server's default model)")
    submit.add_argument("--negative-prompt")
    submit.add_argument("--frames", type=int, help="num_frames (the model's frame rule applies)")
    submit.add_argument("--size", help="WIDTHxHEIGHT")
    submit.add_argument("--steps", type=int, help="num_inference_steps")
    submit.add_argument("--seed", type=int)
    submit.add_argument("--webhook-url")
    submit.add_argument(
        "--idempotency-key",
        help="retrying with the same key returns the first job, not a new one (default: a random key, which "
        "covers the client's own retries after a connection error or a 503)",
    )
    submit.add_argument("--wait", action="store_true", help="wait with a progress bar until the job finishes")
    submit.add_argument("--out", help="write the video here once it succeeds (implies --wait)")
    submit.set_defaults(func=_guarded(_cmd_submit))

    extend = sub.add_parser("extend", parents=[common], help="continue a succeeded job's video (a new job)")
    extend.add_argument("job_id")
    extend.add_argument("--prompt", required=True, help="what happens next")
    length = extend.add_mutually_exclusive_group()
    length.add_argument("--frames", "--num-frames", type=int, help="new frames (the model's frame rule applies)")
    length.add_argument("--seconds", type=float, help="new seconds at the source's fps, rounded to the frame rule")
    extend.add_argument("--steps", type=int, help="num_inference_steps (default: the source's)")
    extend.add_argument("--seed", type=int)
    extend.add_argument("--include-original", action="store_true", help="the new video starts with the source's")
    extend.add_argument("--idempotency-key", help="retrying with the same key returns the first job")
    extend.add_argument("--wait", action="store_true", help="wait with a progress bar until the job finishes")
    extend.add_argument("--out", help="write the video here once it succeeds (implies --wait)")
    extend.set_defaults(func=_guarded(_cmd_extend))

    status = sub.add_parser("status", parents=[common], help="a job's status, progress and video URL")
    status.add_argument("job_id")
    status.set_defaults(func=_guarded(_cmd_status))

    cancel = sub.add_parser("cancel", parents=[common], help="cancel a queued or running job")
    cancel.add_argument("job_id")
    cancel.set_defaults(func=_guarded(_cmd_cancel))

    listing = sub.add_parser("list", parents=[common], help="jobs, newest first")
    listing.add_argument("--status")
    listing.add_argument("--model")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--cursor")
    listing.set_defaults(func=_guarded(_cmd_list))
