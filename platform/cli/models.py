"""`minimax-m1 models`: list the models an endpoint serves."""
from __future__ import annotations

import argparse
import dataclasses
import json

from minimax_m1.cli.client_options import add_client_arguments, make_client, sdk_errors
from minimax_m1.cli.common import EXIT_OK

_COLUMNS = ("id", "max_context", "num_experts", "experts_per_token")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    add_client_arguments(parser)


def run(args: argparse.Namespace) -> int:
    with make_client(args) as client, sdk_errors():
        models = client.list_models()
    if args.json:
        print(json.dumps([dataclasses.asdict(model) for model in models]))
        return EXIT_OK
    rows = [_COLUMNS] + [tuple(str(getattr(model, c)) for c in _COLUMNS) for model in models]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return EXIT_OK
