"""The `minimax-m1` command line.

Each subcommand lives in its own module with `add_parser(subparsers)` and `run(args) -> int`.
Modules are imported only when their command runs, so `minimax-m1 --help` stays fast and the
SDK-only install can run client commands without torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from minimax_m1.cli.common import EXIT_USAGE, CliError

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "make-checkpoint": ("minimax_m1.cli.make_checkpoint", "write a tiny random checkpoint with a tokenizer"),
    "local-generate": ("minimax_m1.cli.local_generate", "generate text in this process (no server)"),
    "serve": ("minimax_m1.cli.serve", "serve a model locally: Ray Serve engine with the gateway in front"),
    "plan": ("minimax_m1.cli.plan", "check that a tp/ep shard plan fits a model on GPUs of a given memory"),
    "train-demo": ("minimax_m1.cli.train_demo", "train the demo model on Shakespeare (CPU, about 30 min)"),
    "generate": ("minimax_m1.cli.generate", "generate text through a gateway (--stream, --json)"),
    "count-tokens": ("minimax_m1.cli.count_tokens", "count the tokens of an input on a gateway"),
    "models": ("minimax_m1.cli.models", "list the models a gateway serves"),
    "deploy": ("minimax_m1.cli.deploy", "install or upgrade the Helm chart on a cluster"),
    "status": ("minimax_m1.cli.status", "show a release's RayService, Ray pods and gateway"),
    "scale": ("minimax_m1.cli.scale", "scale the gateway and the number of model instances"),
    "keys": ("minimax_m1.cli.keys", "create, list and revoke the gateway's API keys"),
    "usage": ("minimax_m1.cli.usage", "billed usage per tenant and model from the gateway's ledger"),
}

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minimax-m1", description="MiniMax-M1 serving platform")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        _add_arguments(module, p)
    return parser


def _add_arguments(module: str, parser: argparse.ArgumentParser) -> None:
    # Argument definitions are tiny and import nothing heavy; the work is in `run`.
    importlib.import_module(module).add_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
