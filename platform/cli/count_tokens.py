"""`minimax-m1 count-tokens`: count the tokens of an input with the served model's tokenizer."""
from __future__ import annotations

import argparse
import json
import sys

from minimax_m1.cli.client_options import add_client_arguments, make_client, sdk_errors
from minimax_m1.cli.common import EXIT_OK, EXIT_USAGE, CliError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", nargs="?", default="-", help="the text; '-' or nothing reads it from stdin")
    parser.add_argument("--model", help="model name (default: the endpoint's default model)")
    parser.add_argument("--json", action="store_true", help='print {"input_tokens": N}')
    add_client_arguments(parser)


def run(args: argparse.Namespace) -> int:
    text = args.input
    if text == "-":
        if sys.stdin.isatty():
            raise CliError("no input: pass it as an argument or pipe it on stdin", EXIT_USAGE)
        text = sys.stdin.read()
    with make_client(args) as client, sdk_errors():
        count = client.count_tokens(text, model=args.model)
    print(json.dumps({"input_tokens": count}) if args.json else count)
    return EXIT_OK
