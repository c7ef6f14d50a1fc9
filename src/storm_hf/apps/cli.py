# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""The `storm-hf` command: `storm-hf train CONFIG` (storm_hf.training.job), `storm-hf demo ...` (storm_hf.apps.demo) and
`storm-hf eval DATA ...` (storm_hf.evaluation.runner).

Exit status: 0 on success; 2 for a usage or input error (argparse's convention: a bad flag, a missing or
unreadable file, a bad config, video or checkpoint), with a one-line message on stderr and no traceback."""

from __future__ import annotations

import argparse
import sys

COMMANDS = {
    "train": "fine-tune with a JSON/YAML config (see storm_hf.training.job)",
    "demo": "ask a model about a video; without arguments, run held-out benchmark clips (see storm_hf.apps.demo)",
    "eval": "evaluate a model on a local JSON/JSONL video QA set (see storm_hf.evaluation.runner)",
}
INPUT_ERROR = 2  # the exit status of usage and input errors, as argparse's own


def _input_error(command: str, error: BaseException):
    print(f"storm-hf {command}: error: {error}", file=sys.stderr)
    raise SystemExit(INPUT_ERROR) from None


def main(argv=None) -> int:
    """Runs one `storm-hf` command and returns its exit status (0); errors in the input exit with status 2 and
    a one-line message. From Python, call `storm_hf.training.train` or `storm_hf.apps.demo.main` for their results."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = argparse.ArgumentParser(prog="storm-hf", description="STORM tools")
        commands = parser.add_subparsers(dest="command", required=True)
        for name, text in COMMANDS.items():
            commands.add_parser(name, help=text, add_help=False)
        parser.parse_args(argv)  # prints the usage and exits: no command, or an unknown one
        return INPUT_ERROR
    command, rest = argv[0], argv[1:]
    if command == "train":
        from ..training.job import main as run
    elif command == "eval":
        from ..evaluation.runner import main as run
    else:
        from .demo import main as run
    try:
        run(rest)
        return 0
    except (ValueError, OSError) as error:  # bad video, bad checkpoint, missing file: the message says what
        _input_error(command, error)


if __name__ == "__main__":
    raise SystemExit(main())
