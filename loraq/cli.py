"""The loraq server's commands: run the pieces (gateway, worker, webhook worker, the whole local
stack), the demo, API keys. They join the client's commands in the `loraq` command, which the
loraq-client distribution owns, through this distribution's `loraq.commands` entry point;
`python -m loraq.cli` adds them by hand, so it works without the entry point installed."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from common.settings import Settings
from loraq_client import cli as client_cli


def _gateway(args: argparse.Namespace) -> int:
    import uvicorn

    from api.main import create_app

    uvicorn.run(create_app(Settings()), host=args.host, port=args.port, log_level="info")
    return 0


def _worker(_: argparse.Namespace) -> int:
    # oneDNN (torch's CPU kernels) caches a primitive per forward shape; packed rows make nearly
    # every batch a new shape, so the cache reused little and grew a worker by 68 MB from a 20k-
    # to a 100k-line batch, and within 2 MB with it off, at no measured cost (`bench/batch.py`).
    # Read at oneDNN's first primitive, so set before the worker starts; an operator's value wins.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")
    from worker.encode_worker import EncodeWorker

    EncodeWorker(Settings()).run()
    return 0


def _webhooks(_: argparse.Namespace) -> int:
    from webhooks.worker import WebhookWorker

    WebhookWorker(Settings()).run()
    return 0


def _up(args: argparse.Namespace) -> int:
    from loraq.stack import LOCAL_DEV_ENV, Stack, needs_local_redis, start_redis

    settings = Settings()
    state_dir = Path(args.state_dir)
    env = {**LOCAL_DEV_ENV, **{k: v for k, v in os.environ.items() if k.startswith("LORAQ_")}}
    redis_proc = None
    if needs_local_redis(settings):
        redis_proc, url = start_redis(state_dir / "redis", appendonly=True, log_dir=state_dir)
        env["LORAQ_REDIS_URL"] = url
        print(f"started redis-server at {url} (data in {state_dir / 'redis'})")
    stack = Stack(env=env, log_dir=state_dir / "logs", port=args.port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stack.start_gateway()
        for _ in range(args.workers):
            stack.start_worker()
        if settings.webhooks.secret is not None:
            stack.start_webhooks()
        stack.wait_ready()
        print(f"loraq is up at {stack.url} (logs in {stack.log_dir}); Ctrl-C stops it")
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
        if redis_proc is not None:
            redis_proc.stop()
    return 0


def _demo(args: argparse.Namespace) -> int:
    from loraq.demo import run_demo

    return run_demo(Path(args.state_dir), port=args.port)


def _adapters_demo(args: argparse.Namespace) -> int:
    from loraq.demo import make_demo_adapters

    for lora_id in make_demo_adapters(Path(args.out)):
        print(lora_id)
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from api.auth import new_key
    from common.settings import ApiKey

    key, digest = new_key()
    try:
        entry = ApiKey(tenant=args.tenant, sha256=digest)
    except ValidationError as exc:
        print(f"loraq: invalid tenant {args.tenant!r}: {exc.errors()[0]['msg']}", file=sys.stderr)
        return 2
    print(key)
    print(json.dumps(entry.model_dump(include={"tenant", "sha256"}), separators=(",", ":")))
    print(
        "The key (first line) is shown only this once: hand it to the tenant. Add the entry "
        "(second line) to the JSON list in LORAQ_AUTH__KEYS; the gateway keeps only its digest.",
        file=sys.stderr,
    )
    print(_webhook_secret_note(args.tenant), file=sys.stderr)
    return 0


def _webhook_secret_note(tenant: str) -> str:
    """The tenant's webhook secret is derived from the master secret, so it can be shown now
    when this environment has that secret (`common.webhook_secret`)."""
    from pydantic import ValidationError

    from common.settings import Settings
    from common.webhook_secret import derive

    try:
        master = Settings().webhooks.secret
    except ValidationError:
        master = None
    if master is None:
        return "The tenant's receivers get its webhook secret from GET /v1/webhook-secret."
    return (
        f"The tenant's webhook signing secret (GET /v1/webhook-secret shows it too): "
        f"{derive(master, tenant)}"
    )


def add_server_commands(sub: client_cli.Subcommands) -> None:
    """The `loraq.commands` entry point of this distribution."""
    p = sub.add_parser("gateway", help="run the HTTP gateway")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=_gateway)

    p = sub.add_parser("worker", help="run one encode worker (model from LORAQ_WORKER__MODEL)")
    p.set_defaults(func=_worker)

    p = sub.add_parser("webhooks", help="run the webhook delivery worker (no model, no GPU)")
    p.set_defaults(func=_webhooks)

    p = sub.add_parser("up", help="run Redis (if none is reachable), the gateway and workers")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--state-dir", default=".loraq")
    p.set_defaults(func=_up)

    p = sub.add_parser("demo", help="the whole demo: stack up, adapters, jobs, results, down")
    p.add_argument("--port", type=int, default=0, help="gateway port (default: a free one)")
    p.add_argument("--state-dir", default=".loraq")
    p.set_defaults(func=_demo)

    adapters = client_cli.command_group(sub, "adapters", "adapter utilities")
    p = adapters.add_parser("demo", help="fine-tune the two demo adapters (PEFT format)")
    p.add_argument("--out", default="adapters", help="adapter directory to write into")
    p.set_defaults(func=_adapters_demo)

    p = sub.add_parser("keys", help="API keys")
    keys = p.add_subparsers(dest="keys_command", required=True)
    p = keys.add_parser("create", help="print a new API key and its LORAQ_AUTH__KEYS entry")
    p.add_argument("--tenant", required=True, help="the tenant the key's jobs belong to")
    p.set_defaults(func=_keys_create)


def main(argv: list[str] | None = None) -> int:
    return client_cli.main(argv, extensions=[add_server_commands])


if __name__ == "__main__":
    sys.exit(main())
