"""The ``payflow`` command."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence

from payflow import __version__
from payflow.cli import dead as cli_dead
from payflow.cli import listen as cli_listen
from payflow.cli import pay as cli_pay
from payflow.cli import push as cli_push
from payflow.cli import status as cli_status
from payflow.cli import store as cli_store
from payflow.errors import ConfigError, StartupError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="payflow",
        description="PayFlow: an asynchronous payment gateway (HTTP intake, Redis queues, "
                    "webhooks) in one asyncio daemon.")
    parser.add_argument("--version", action="version", version=f"payflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser(
        "serve", help="run the daemon: HTTP intake, payment and webhook consumers",
        description="Run the PayFlow daemon. Settings come from payflow.toml, then "
                    "PAYFLOW_<SECTION>_<KEY> environment variables, then these flags "
                    "(later wins).")
    serve.add_argument("--config", metavar="PATH",
                       help="configuration file (default: $PAYFLOW_CONFIG, else ./payflow.toml "
                            "if present)")
    serve.add_argument("--redis-url", metavar="URL",
                       help='"embedded", or redis://host:port/db, rediss://…, unix://…, or '
                            "redis+sentinel://host:port[,host:port…]/service[/db] "
                            "([redis] url)")
    serve.add_argument("--host", metavar="H", help="HTTP listen address ([http] host)")
    serve.add_argument("--port", metavar="P", help="HTTP listen port ([http] port)")
    serve.add_argument("--log-format", choices=("console", "json"),
                       help="console lines or JSON lines ([log] format; default: console on "
                            "a terminal, JSON otherwise)")
    cli_dead.add_parser(sub)
    cli_listen.add_parser(sub)
    cli_store.add_parsers(sub)
    cli_status.add_parser(sub)
    cli_push.add_parser(sub)
    cli_pay.add_parser(sub)
    return parser


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """``[daemon] event_loop``: uvloop's loop (``auto``: when it is installed), or None for
    asyncio's own."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("[daemon] event_loop = \"uvloop\", but uvloop is not installed "
                              "(pip install 'payflow[fast]')") from None
        return None
    return uvloop.new_event_loop


def _serve(args: argparse.Namespace) -> int:
    from payflow import gctune, logs, tracing
    from payflow.config import load_config
    from payflow.daemon import run

    overrides: dict[str, dict[str, object]] = {}
    sources: dict[tuple[str, str], str] = {}
    for section, key, flag, value in (
        ("redis", "url", "--redis-url", args.redis_url),
        ("http", "host", "--host", args.host),
        ("http", "port", "--port", args.port),
        ("log", "format", "--log-format", args.log_format),
    ):
        if value is not None:
            overrides.setdefault(section, {})[key] = value
            sources[(section, key)] = flag
    try:
        config = load_config(args.config, overrides=overrides, override_sources=sources)
    except ConfigError as exc:
        print(f"payflow: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(config.log.format, config.log.level)
    tracing.setup()  # on with $OTEL_EXPORTER_OTLP_ENDPOINT and payflow[otel] installed
    gctune.tune()
    try:
        loop_factory = event_loop_factory(config.daemon.event_loop)
    except ConfigError as exc:
        print(f"payflow: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(run(config))
    except StartupError as exc:
        print(f"payflow: cannot start: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"payflow: configuration error: {exc}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "dead":
        return cli_dead.run(args)
    if args.command == "listen":
        return cli_listen.run(args)
    if args.command in ("migrate", "prune"):
        return cli_store.run(args)
    if args.command == "status":
        return cli_status.run(args)
    if args.command == "push":
        return cli_push.run(args)
    if args.command == "pay":
        return cli_pay.run(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
