"""`minimax-m1 generate`: generate text through a gateway with the SDK.

    minimax-m1 generate "Explain lightning attention" --max-output-tokens 200 --stream
    echo "prompt" | minimax-m1 generate - --json

The text goes to stdout (as it comes with --stream); the finish reason and usage go to stderr,
so stdout stays clean. --json prints the result as one JSON object, or with --stream one JSON
object per chunk (JSON lines).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from minimax_m1._constants import DEFAULT_MAX_OUTPUT_TOKENS
from minimax_m1.cli.client_options import add_client_arguments, make_client, sdk_errors
from minimax_m1.cli.common import EXIT_OK, EXIT_USAGE, CliError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", nargs="?", default="-", help="the prompt; '-' or nothing reads it from stdin")
    parser.add_argument("--model", help="model name (default: the endpoint's default model)")
    parser.add_argument(
        "--max-output-tokens", type=int, default=DEFAULT_MAX_OUTPUT_TOKENS,
        help=f"upper bound on generated tokens (default {DEFAULT_MAX_OUTPUT_TOKENS})",
    )  # fmt: skip
    parser.add_argument("--context-window", type=int, help="cap on input + output tokens for this request")
    parser.add_argument(
        "--expert-threshold", type=float,
        help="dynamic top-p expert routing in [0, 1]; lower activates fewer experts (default: exact top-2)",
    )  # fmt: skip
    parser.add_argument("--thinking-budget", type=int, help="cap on thinking tokens")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--temperature", type=float, help="0 means greedy (the default)")
    sampling.add_argument("--top-p", type=float, help="nucleus sampling mass in (0, 1]")
    sampling.add_argument("--top-k", type=int, help="keep the k most likely tokens")
    sampling.add_argument("--seed", type=int, help="makes sampled output reproducible")
    sampling.add_argument(
        "--stop", action="append", default=[], metavar="TEXT", help="stop before this text (repeatable)"
    )
    sampling.add_argument(
        "--stop-token-id", action="append", type=int, default=[], metavar="ID",
        help="also stop at this token id (repeatable)",
    )  # fmt: skip
    parser.add_argument("--routing-log", action="store_true", help="return expert activation counts per layer")
    parser.add_argument(
        "--request-id",
        help="idempotency key: the gateway bills it once, which also lets the CLI retry the call safely",
    )
    output = parser.add_argument_group("output")
    output.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    output.add_argument("--json", action="store_true", help="print JSON (JSON lines with --stream)")
    add_client_arguments(parser)


def run(args: argparse.Namespace) -> int:
    prompt = _read_prompt(args.input)
    params = dict(
        max_output_tokens=args.max_output_tokens,
        context_window=args.context_window,
        expert_threshold=args.expert_threshold,
        thinking_budget=args.thinking_budget,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        stop=args.stop,
        stop_token_ids=args.stop_token_id,
        return_routing_log=args.routing_log,
        request_id=args.request_id,
        model=args.model,
    )
    try:
        with make_client(args) as client, sdk_errors():
            if args.stream:
                _stream(client, prompt, params, as_json=args.json)
            else:
                result = client.generate(prompt, **params)
                if args.json:
                    print(json.dumps(_jsonable(result)))
                else:
                    print(result.text)
                    _summary(result.finish_reason, result.usage, result.request_id)
    except BrokenPipeError:
        # The reader went away (`| head`): leaving the `with` cancelled the stream; stop quietly
        # like other Unix tools, and keep Python from complaining when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK


def _stream(client, prompt: str, params: dict, as_json: bool) -> None:
    last = None
    with client.stream(prompt, **params) as stream:
        for chunk in stream:
            last = chunk
            if as_json:
                print(json.dumps(_jsonable(chunk)), flush=True)
            else:
                sys.stdout.write(chunk.text_delta)
                sys.stdout.flush()
    if not as_json:
        sys.stdout.write("\n")
        if last is not None:
            _summary(last.finish_reason, last.usage, last.request_id)


def _read_prompt(value: str) -> str:
    if value != "-":
        return value
    if sys.stdin.isatty():
        raise CliError("no prompt: pass it as an argument or pipe it on stdin", EXIT_USAGE)
    return sys.stdin.read()


def _summary(finish_reason, usage, request_id: str) -> None:
    finish = finish_reason.value if finish_reason is not None else "unknown"
    print(
        f"[finish={finish} input_tokens={usage.input_tokens} output_tokens={usage.output_tokens} "
        f"expert_activations={usage.expert_activations} request_id={request_id}]",
        file=sys.stderr,
    )


def _jsonable(result) -> dict:
    data = dataclasses.asdict(result)
    if result.finish_reason is not None:
        data["finish_reason"] = result.finish_reason.value
    return data
