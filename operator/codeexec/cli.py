"""The `codeexec` command: `operator` runs the controller; more subcommands serve users."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys


def run_operator(args: argparse.Namespace) -> int:
    import kopf

    import codeexec.handlers  # noqa: F401  (registers the handlers)
    from codeexec.settings import Settings

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    cfg = Settings()
    asyncio.run(
        kopf.operator(
            standalone=True,
            clusterwide=not cfg.namespaces,
            namespaces=list(cfg.namespaces),
        )
    )
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="codeexec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    op = sub.add_parser("operator", help="run the operator")
    op.add_argument("-v", "--verbose", action="store_true")
    op.set_defaults(func=run_operator)
    gw = sub.add_parser("gateway", help="serve the original sandbox's HTTP API (POST /run)")
    from codeexec.gateway import app as gateway_app

    gateway_app.add_arguments(gw)
    gw.set_defaults(func=gateway_app.main)
    args = parser.parse_args(argv)
    sys.exit(args.func(args))
