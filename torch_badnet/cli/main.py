"""The `torch-badnet` command line. Subcommands live in torch_badnet.cli.commands, imported lazily.

Every user error ends as one line `error: <file>: <problem>` on stderr and exit code 2. Commands run in
IEEE float32 on GPUs (`precision.exact_float32`), so a GPU gives the CPU's labels.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from .. import __version__
from ..errors import BadInputError, first_line
from .commands import batch, classify, convert_cmd, demo, evaluate, export, finetune, sweep

EXIT_BAD_INPUT = 2
COMMANDS = (demo, convert_cmd, evaluate, classify, sweep, batch, finetune, export)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but usage errors are a single `error:` line (exit 2) like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"error: {self.prog}: {message} (see {self.prog} --help)\n")
        sys.exit(EXIT_BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="torch-badnet", description="The Fine-Pruning defense against BadNets, in PyTorch.")
    parser.add_argument("--version", action="version", version=f"torch-badnet {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()
    args = build_parser().parse_args(argv)
    args.started = started  # the whole run's start, for closing lines that report its wall time
    try:
        before_torch = getattr(args, "before_torch", None)
        if before_torch is not None:
            before_torch(args)  # work that overlaps torch's import (the sweep starts hashing its inputs)
        from ..nets.precision import exact_float32  # imports torch: only once a command runs, not for --help

        with exact_float32():
            return args.run(args)
    except BadInputError as exc:
        sys.stderr.write(f"error: {exc.path}: {exc.problem}\n")
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    except MemoryError:
        sys.stderr.write("error: out of memory (try --device cpu or smaller inputs)\n")
    except Exception as exc:  # a bug, not bad input: still one line unless asked for the traceback
        if os.environ.get("TORCH_BADNET_DEBUG"):
            raise
        sys.stderr.write(f"error: internal error {type(exc).__name__}: {first_line(exc)} (set TORCH_BADNET_DEBUG=1 for the traceback)\n")
        return 1
    finally:
        from .commands.common import release_output_folders

        release_output_folders()  # the --out locks, held for the whole command
    return EXIT_BAD_INPUT


def entry() -> None:
    """The `torch-badnet` program: run `main`, then `leave`."""
    leave(main())


def leave(code: int) -> None:
    """Flush and exit without Python's teardown (freeing torch and the sweep's large tensors takes about half a
    second); only once every output is written and closed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
