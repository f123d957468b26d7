"""The ``ontap-job-poller`` command: parse options, configure logging, load settings, run."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Final

from poller import __version__
from poller.config import Settings, load_settings
from poller.errors import BrokerError, ConfigError, NotRouted
from poller.ops import configure_logging, redact_url

EX_CONFIG: Final = 78  # sysexits.h: configuration error
EXIT_NOT_PUBLISHED: Final = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ontap-job-poller",
        description="Watch NetApp ONTAP asynchronous jobs and publish their state changes "
        "as CloudEvents on RabbitMQ.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--config", metavar="FILE", help="TOML configuration (default: $POLLER_CONFIG)"
        )
        return p

    command("run", "Run the worker: consume watch requests, poll ONTAP, publish events.")
    watch = command("watch", "Publish one watch request; with --wait, print its events.")
    watch.add_argument("uuid", help="the ONTAP job UUID")
    watch.add_argument("--cluster", help="a configured cluster name (optional with one cluster)")
    watch.add_argument("--timeout", type=float, metavar="S", help="deadline of the watch, seconds")
    watch.add_argument(
        "--traceparent",
        default=os.environ.get("TRACEPARENT"),
        metavar="TP",
        help="W3C traceparent to carry to the watch's events (default: $TRACEPARENT)",
    )
    watch.add_argument(
        "--wait",
        action="store_true",
        help="print each event and exit 0 on success, 1 on failure/cancelled/expired, "
        "2 on not_found/timeout/error",
    )
    events = command("events", "Print events as JSON lines until interrupted.")
    events.add_argument(
        "--bind",
        action="append",
        metavar="KEY",
        help="routing key pattern to bind, e.g. 'job.*.success' (repeatable; default '#')",
    )
    simulate = command("simulate", "Serve a simulated ONTAP jobs API (see docs/simulator.md).")
    simulate.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    simulate.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    simulate.add_argument("--username", default="admin", help="basic-auth user (default admin)")
    simulate.add_argument(
        "--password", default="netapp1!", help="basic-auth password (default netapp1!)"
    )
    simulate.add_argument(
        "--password-file",
        metavar="FILE",
        help="read the password from FILE instead, e.g. a Docker secret (trailing newline ignored)",
    )
    simulate.add_argument(
        "--purge-after",
        type=float,
        default=300.0,
        metavar="S",
        help="delete a finished job this many seconds after it ends (default 300, as ONTAP)",
    )
    simulate.add_argument(
        "--user",
        action="append",
        metavar="NAME:PASSWORD",
        help="one more basic-auth user (repeatable)",
    )
    simulate.add_argument(
        "--clock-offset",
        type=float,
        default=0.0,
        metavar="S",
        help="the cluster's clock runs S seconds ahead of this machine's (negative: behind)",
    )
    simulate.add_argument(
        "--timezone",
        default="UTC",
        metavar="TZ",
        help="zone of the times the cluster shows: UTC, an offset like -05:00, or an IANA name "
        "like America/New_York (default UTC)",
    )
    simulate.add_argument(
        "--refuse-filters",
        action="store_true",
        help="answer 400 to collection queries that filter on a field other than uuid",
    )
    simulate.add_argument(
        "--max-page",
        type=int,
        metavar="N",
        help="never return more than N records per page, whatever max_records asks",
    )
    simulate.add_argument(
        "--tls-cert", metavar="FILE", help="serve HTTPS with this PEM certificate"
    )
    simulate.add_argument(
        "--tls-key", metavar="FILE", help="the certificate's PEM key, if not in --tls-cert's file"
    )
    command("demo", "Simulator and worker in one process: three jobs and their events.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        # The demo prints its own story on stdout; the worker's routine lines would bury it.
        quiet = args.command == "demo"
        level = logging.WARNING if quiet else logging.INFO
        configure_logging(settings.log_format, level, for_good=True)
        if args.command == "run":
            settings.require_clusters()
        return _dispatch(args, settings)
    except ConfigError as exc:
        print(f"ontap-job-poller: config error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except NotRouted as exc:
        print(f"ontap-job-poller: request not published: {exc}", file=sys.stderr)
        return EXIT_NOT_PUBLISHED
    except BrokerError as exc:
        print(f"ontap-job-poller: {redact_url(str(exc))}", file=sys.stderr)
        return EXIT_NOT_PUBLISHED if args.command == "watch" else 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "run":
        from poller.runner import run_worker, tune_gc

        tune_gc()
        asyncio.run(run_worker(settings))
        return 0
    if args.command == "watch":
        from poller.watch_cli import watch

        return asyncio.run(
            watch(
                settings,
                args.uuid,
                args.cluster,
                args.timeout,
                wait=args.wait,
                traceparent=args.traceparent,
            )
        )
    if args.command == "events":
        from poller.watch_cli import print_events

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(print_events(settings, tuple(args.bind or ["#"])))
        return 0
    if args.command == "simulate":
        return _simulate(args)
    if args.command == "demo":
        from poller import demo

        return demo.main(settings)
    raise AssertionError(args.command)  # pragma: no cover - argparse restricts the choices


def _simulate(args: argparse.Namespace) -> int:
    """Serve a simulator as the options describe; a bad option is a ConfigError (exit 78)."""
    from pydantic import ValidationError

    from poller.simulator import Simulator, serve

    password = args.password
    if args.password_file is not None:
        try:
            with open(args.password_file, encoding="utf-8") as handle:
                password = handle.read().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"--password-file: {exc}") from exc
    users: dict[str, str] = {}
    for pair in args.user or []:
        name, colon, secret = pair.partition(":")
        if not (name and colon):
            # The value is not echoed: it may be a password typed without its name.
            raise ConfigError("--user expects NAME:PASSWORD")
        users[name] = secret
    if args.tls_key is not None and args.tls_cert is None:
        raise ConfigError("--tls-key needs --tls-cert")
    try:
        sim = Simulator(
            username=args.username,
            password=password,
            purge_after_s=args.purge_after,
            users=users,
            clock_offset_s=args.clock_offset,
            timezone=args.timezone,
            refuse_filters=args.refuse_filters,
            max_page=args.max_page,
        )
    except ValidationError as exc:
        option = {
            "clock_offset_s": "--clock-offset",
            "timezone": "--timezone",
            "max_page": "--max-page",
        }
        reasons = (f"{option.get(str(e['loc'][0]), e['loc'][0])}: {e['msg']}" for e in exc.errors())
        raise ConfigError("; ".join(reasons)) from exc
    except ValueError as exc:  # a user given two passwords
        raise ConfigError(str(exc)) from exc
    scheme = "https" if args.tls_cert else "http"
    print(f"simulated ONTAP jobs API on {scheme}://{args.host}:{args.port}", file=sys.stderr)
    server = serve(args.host, args.port, sim, certfile=args.tls_cert, keyfile=args.tls_key)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(server)
    except OSError as exc:  # the address is taken, or the certificate cannot be read
        print(f"ontap-job-poller: simulate: {exc}", file=sys.stderr)
        return 1
    return 0
