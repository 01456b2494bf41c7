"""``mrhnet models``: list the shipped networks with their protocols."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the shipped networks (names usable with --model)")
    p.add_argument("--brief", action="store_true", help="one line per model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..network.catalog import describe, list_models

    entries = list_models()
    if not entries:
        print("no shipped models found")
        return 1
    for e in entries:
        if args.brief:
            print(f"{e.name:20s} {e.kind:9s} {e.target.upper():4s} depth {e.info.depth:2d}  {e.path}")
        else:
            print(describe(e) + "\n")
    return 0
