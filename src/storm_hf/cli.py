# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""The `storm-hf` command: `storm-hf train CONFIG` (storm_hf.train), `storm-hf demo ...` (storm_hf.demo) and
`storm-hf eval DATA ...` (storm_hf.eval_runner)."""

from __future__ import annotations

import argparse
import sys

COMMANDS = {
    "train": "fine-tune with a JSON/YAML config (see storm_hf.train)",
    "demo": "ask a model about a video; without arguments, run held-out benchmark clips (see storm_hf.demo)",
    "eval": "evaluate a model on a local JSON/JSONL video QA set (see storm_hf.eval_runner)",
}


def main(argv=None) -> int:
    """Runs one `storm-hf` command and returns its exit status (0); errors in the input exit with status 1 and
    a one-line message. From Python, call `storm_hf.train.train` or `storm_hf.demo.main` for their results."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = argparse.ArgumentParser(prog="storm-hf", description="STORM tools")
        commands = parser.add_subparsers(dest="command", required=True)
        for name, text in COMMANDS.items():
            commands.add_parser(name, help=text, add_help=False)
        parser.parse_args(argv)  # prints the usage and exits: no command, or an unknown one
        return 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        from .train import load_config, train

        parser = argparse.ArgumentParser(prog="storm-hf train", description=COMMANDS["train"])
        parser.add_argument("config")
        args = parser.parse_args(rest)
        train(load_config(args.config))
        return 0
    if command == "eval":
        from .eval_runner import main as run
    else:
        from .demo import main as run
    try:
        run(rest)
        return 0
    except (ValueError, OSError) as error:  # bad video, bad checkpoint, missing file: the message says what
        print(f"storm-hf {command}: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    raise SystemExit(main())
