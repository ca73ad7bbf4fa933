"""The `dt-collector` command: run, check-config, simulate."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Sequence

from collector import __version__
from collector.config import Config, ConfigError, load_config
from collector.logs import get_logger, setup_logging

DEFAULT_CONFIG = "/etc/dt-collector/config.yaml"
EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    version = f"dt-collector {__version__}"
    parser = argparse.ArgumentParser(
        prog="dt-collector",
        description="Collect SNMP and MQTT metrics and push them to Dynatrace custom devices.",
    )
    parser.add_argument("--version", action="version", version=version)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def config_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", default=os.environ.get("DT_COLLECTOR_CONFIG",
                                                                   DEFAULT_CONFIG),
                       help="config file (default: $DT_COLLECTOR_CONFIG or %(default)s)")
        p.add_argument("--version", action="version", version=version)

    run = commands.add_parser("run", help="run the collector daemon",
                              description="Run the collector until SIGTERM/SIGINT.")
    config_arg(run)
    run.add_argument("--dry-run", action="store_true",
                     help="print every request it would send (method, URL, JSON body) to "
                          "stdout and send nothing; no token needed")
    check = commands.add_parser("check-config", help="validate a config file",
                                description="Exit 0 if the config is valid; otherwise print "
                                            "every error and exit 2.")
    config_arg(check)
    sim = commands.add_parser("simulate", help="run the Dynatrace simulator",
                              description="A strict local stand-in for the Dynatrace custom "
                                          "device and timeseries endpoints.")
    sim.add_argument("--port", type=int, default=8765, help="TCP port (default %(default)s)")
    sim.add_argument("--host", default="127.0.0.1", help="address (default %(default)s)")
    sim.add_argument("--token", action="append", default=None,
                     help="accepted API token (repeatable; default: any non-empty token)")
    sim.add_argument("--max-body-bytes", type=int, default=15360,
                     help="answer 413 above this body size (default %(default)s)")
    sim.add_argument("--version", action="version", version=version)
    return parser


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"dt-collector: {len(exc.issues)} error(s) in the config:", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return None


def _check_config(path: str) -> int:
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    metrics = config.all_metrics()
    print(f"{path}: OK ({len(metrics)} metrics, {len(config.devices)} devices, "
          f"{len(config.sources)} sources)")
    return 0


def _run(path: str, dry_run: bool) -> int:
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    setup_logging(config.log.level, config.log.format)
    if not dry_run and config.dynatrace.api_token() is None:
        get_logger("collector").error(
            "no Dynatrace API token: set dynatrace.token, dynatrace.token_file or DT_API_TOKEN")
        return EXIT_CONFIG
    from collector.daemon import Daemon

    async def main() -> None:
        await Daemon(config, config_path=path, dry_run=dry_run).run(handle_signals=True)

    asyncio.run(main())
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from collector.simulator import serve

    setup_logging("info", "auto")
    tokens = set(args.token) if args.token else None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, tokens, args.max_body_bytes))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return _check_config(args.config)
    if args.command == "run":
        return _run(args.config, args.dry_run)
    return _simulate(args)
