"""Placeholder until the gateway lands: the subcommand exists and says so."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8090)


def main(args: argparse.Namespace) -> int:
    raise SystemExit("the gateway is not implemented yet")
