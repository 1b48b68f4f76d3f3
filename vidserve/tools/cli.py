"""The `vidserve` command: database migrations, tiny models, API keys, the worker, the webhook sender and the API.

Imports are lazy on purpose: `vidserve db upgrade` must not pay for torch, and the API never loads it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import datetime as dt

    from vidserve.schema import ApiKey


def _settings():
    from vidserve.settings import Settings

    return Settings.from_env()


def _cmd_db(args: argparse.Namespace) -> int:
    from vidserve import db

    url = _settings().database_url
    if args.action == "upgrade":
        if db.create_database(url):
            print(f"created database {url.rsplit('/', 1)[-1]}")
        db.upgrade(url, args.revision or "head")
    else:
        db.downgrade(url, args.revision or "base")
    print(f"database {args.action}d to {args.revision or ('head' if args.action == 'upgrade' else 'base')}")
    return 0


def _cmd_models_build_tiny(args: argparse.Namespace) -> int:
    from pathlib import Path

    from engine.tiny import build_tiny_models

    out = Path(args.out or os.path.join(_settings().model_dir, "tiny"))
    built = build_tiny_models(out, args.family or None)
    for family, path in built.items():
        print(f"{family:14s} {path}")
    return 0


def _cmd_models_list(args: argparse.Namespace) -> int:
    from engine.registry import ModelRegistry

    settings = _settings()
    registry = ModelRegistry.from_file(settings.models_file or None, settings.model_dir)
    for spec in registry:
        present = os.path.exists(spec.path)  # a hub id shows as missing until it is in the local cache
        if args.json:
            print(json.dumps({**spec.public_dict(), "path": spec.path, "present": present}))
        else:
            print(f"{spec.name:22s} {spec.family:13s} {'ok     ' if present else 'missing'} {spec.path}")
    return 0


def _cmd_train_demo(args: argparse.Namespace) -> int:
    from engine.demo.train import main as train_main

    return int(train_main(args.rest) or 0)


def _cmd_worker(args: argparse.Namespace) -> int:
    from vidserve.queue import queue_for

    if args.models:
        os.environ["VIDSERVE_WORKER_MODELS"] = args.models
    if args.slots:
        os.environ["VIDSERVE_WORKER_SLOTS"] = str(args.slots)
    from worker import context
    from worker.celery_app import app, run_worker

    settings = _settings()
    ctx = context.WorkerContext.build(settings, app)
    context.install(ctx)
    queues = [queue_for(m) for m in ctx.engines.models]
    if not queues:
        print("no models to serve", file=sys.stderr)
        return 2
    run_worker(queues, settings.worker_slots, "gen", settings.log_level)
    return 0


def _cmd_webhooks(args: argparse.Namespace) -> int:
    from vidserve.queue import WEBHOOK_QUEUE
    from worker import context
    from worker.celery_app import app, run_worker

    settings = _settings()
    context.install(context.WorkerContext.build(settings, app, models=[]))
    run_worker([WEBHOOK_QUEUE], args.concurrency or settings.webhook_concurrency, "webhooks", settings.log_level)
    return 0


def _cmd_webhooks_enable(args: argparse.Namespace) -> int:
    from vidserve.webhook_store import WebhookStore

    if not WebhookStore(_settings().database_url).enable(args.url):
        print(f"{args.url} is not disabled", file=sys.stderr)
        return 1
    print(f"enabled {args.url}: new events are sent to it; failed deliveries can be redelivered")
    return 0


def _cmd_webhooks_disabled(args: argparse.Namespace) -> int:
    from vidserve.webhook_store import WebhookStore

    for endpoint in WebhookStore(_settings().database_url).disabled_endpoints():
        print(f"{endpoint.url}\t{endpoint.disabled_at.isoformat(timespec='seconds')}\t{endpoint.reason}")
    return 0


def _key_store():
    from vidserve.keys import KeyStore

    return KeyStore(_settings().database_url)


def _key_line(key: ApiKey) -> str:
    def when(value: dt.datetime | None) -> str:
        return value.strftime("%Y-%m-%d %H:%M") if value else "-"

    state = f"revoked {when(key.revoked_at)}" if key.revoked_at else "active"
    limits = [
        f"max {key.max_concurrent_jobs} jobs" if key.max_concurrent_jobs is not None else "",
        f"{key.rate_limit_per_minute}/min" if key.rate_limit_per_minute is not None else "",
    ]
    return (
        f"{key.id}  {key.prefix}…  {key.name:20s}  {','.join(key.scopes):28s}  created {when(key.created_at)}  "
        f"used {when(key.last_used_at)}  {state}  {' '.join(x for x in limits if x)}"
    ).rstrip()


def _cmd_keys_create(args: argparse.Namespace) -> int:
    try:
        key, token = _key_store().create(
            args.name, args.scope, args.max_concurrent_jobs, args.rate_limit_per_minute, weight=args.weight
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(_key_line(key), file=sys.stderr)
    print("the key (shown only now; keep it secret):", file=sys.stderr)
    print(token)
    return 0


def _cmd_keys_list(args: argparse.Namespace) -> int:
    keys = _key_store().list()
    for key in keys:
        if args.json:
            print(json.dumps(_key_dict(key)))
        else:
            print(_key_line(key))
    return 0


def _key_dict(key: ApiKey) -> dict[str, Any]:
    return {
        "id": str(key.id),
        "prefix": key.prefix,
        "name": key.name,
        "scopes": key.scopes,
        "max_concurrent_jobs": key.max_concurrent_jobs,
        "rate_limit_per_minute": key.rate_limit_per_minute,
        "weight": key.weight,
        "created_at": key.created_at.isoformat(),
        "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
    }


def _cmd_keys_revoke(args: argparse.Namespace) -> int:
    from vidserve.keys import AmbiguousKey, KeyNotFound

    try:
        key = _key_store().revoke(args.key)
    except KeyNotFound as e:
        print(f"error: no key matches {e}", file=sys.stderr)
        return 1
    except AmbiguousKey as e:
        print(f"error: more than one key starts with {e}; give its id", file=sys.stderr)
        return 1
    print(_key_line(key))
    return 0


def _cmd_api(args: argparse.Namespace) -> int:
    settings = _settings()
    bind = f"{args.host or settings.host}:{args.port or settings.port}"
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        bind,
        "--workers",
        str(args.workers),
        "--threads",
        str(args.threads),
        "--access-logfile",
        "-",
        "--log-level",
        settings.log_level.lower(),
        "--graceful-timeout",
        "10",
        "api.wsgi:app",
    ]
    os.execv(sys.executable, argv)  # gunicorn becomes this process: signals reach it directly
    return 0  # pragma: no cover


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidserve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    db_p = sub.add_parser("db", help="create/upgrade or downgrade the database schema (Alembic)")
    db_p.add_argument("action", choices=["upgrade", "downgrade"])
    db_p.add_argument("revision", nargs="?", help="target revision (default: head / base)")
    db_p.set_defaults(func=_cmd_db)

    models = sub.add_parser("models", help="the model registry and the tiny offline models")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    build = models_sub.add_parser("build-tiny", help="build tiny random-weight pipelines (no download)")
    build.add_argument("--out", help="output directory (default: $VIDSERVE_MODEL_DIR/tiny)")
    build.add_argument("--family", action="append", help="only this family (repeatable)")
    build.set_defaults(func=_cmd_models_build_tiny)
    listing = models_sub.add_parser("list", help="the registered models")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_cmd_models_list)

    train = sub.add_parser("train-demo-model", help="train the demo model (arguments go to engine.demo.train)")
    train.add_argument("rest", nargs=argparse.REMAINDER)
    train.set_defaults(func=_cmd_train_demo)

    worker = sub.add_parser("worker", help="a generation worker: one engine per model, a window of slots")
    worker.add_argument("--models", help="comma-separated models (default: VIDSERVE_WORKER_MODELS, else all)")
    worker.add_argument("--slots", type=int, help="jobs held at once (default: VIDSERVE_WORKER_SLOTS)")
    worker.set_defaults(func=_cmd_worker)

    hooks = sub.add_parser("webhooks", help="the webhook sender: signs, delivers and retries webhook events")
    hooks.add_argument("--concurrency", type=int, help="deliveries at once (default: VIDSERVE_WEBHOOK_CONCURRENCY)")
    hooks.set_defaults(func=_cmd_webhooks)
    hooks_sub = hooks.add_subparsers(dest="webhooks_command", metavar="{enable,disabled}")
    enable = hooks_sub.add_parser("enable", help="send to a webhook URL again after it answered 410 Gone")
    enable.add_argument("url")
    enable.set_defaults(func=_cmd_webhooks_enable)
    hooks_sub.add_parser("disabled", help="the disabled webhook URLs").set_defaults(func=_cmd_webhooks_disabled)

    keys = sub.add_parser("keys", help="API keys of the REST API: create, list, revoke")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key and print its token (shown only once)")
    create.add_argument("--name", required=True, help="who or what uses the key")
    create.add_argument(
        "--scope",
        action="append",
        required=True,
        choices=["jobs:read", "jobs:write", "jobs:priority", "admin"],
        help="repeatable; jobs:priority allows submitting priority high",
    )
    create.add_argument("--max-concurrent-jobs", type=int, help="0: unlimited (default: the deployment's setting)")
    create.add_argument(
        "--weight", type=float, default=1.0, help="share of the fair queue against other keys (default 1)"
    )
    create.add_argument("--rate-limit-per-minute", type=int, help="job submissions per minute (default: setting)")
    create.set_defaults(func=_cmd_keys_create)
    keys_list = keys_sub.add_parser("list", help="every key, without secrets")
    keys_list.add_argument("--json", action="store_true")
    keys_list.set_defaults(func=_cmd_keys_list)
    revoke = keys_sub.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("key", help="the key's id, or its prefix as `keys list` shows it")
    revoke.set_defaults(func=_cmd_keys_revoke)

    api = sub.add_parser("api", help="the REST API under gunicorn")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.add_argument("--workers", type=int, default=2)
    api.add_argument("--threads", type=int, default=4)
    api.set_defaults(func=_cmd_api)

    from vidserve.tools import cli_client  # submit, status, cancel, list: clients of the public API

    cli_client.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
