"""The ``cincer`` command line. Each sub-command lives in its own module exposing ``add_parser``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn

from .errors import CincerError

# module path of each sub-command; a module exposes add_parser(subparsers) and sets func=handler
COMMANDS = [
    "cincer.commands.run",
    "cincer.commands.data",
    "cincer.commands.bench",
    "cincer.commands.serve",
    "cincer.commands.project",
    "cincer.commands.export",
    "cincer.commands.experiment",
    "cincer.commands.sweep",
    "cincer.commands.plot",
    "cincer.commands.compare",
    "cincer.commands.audit",
    "cincer.commands.rankings",
]
THREADS_ENV = "CINCER_THREADS"


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad usage on a single line (exit 2), without the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="cincer", description="Interactive label cleaning with example-based explanations.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for module in COMMANDS:
        importlib.import_module(module).add_parser(sub)
    _add_threads(parser)
    return parser


def _add_threads(parser: argparse.ArgumentParser) -> None:
    """``--threads``, accepted before or after any (sub-)command name; absent unless given."""
    parser.add_argument("--threads", type=int, default=argparse.SUPPRESS, metavar="N",
                        help=f"PyTorch CPU threads, also of each worker process (default: ${THREADS_ENV} or 1: the "
                             "paper's small networks train fastest on one thread, and parallel jobs share the "
                             "cores; 0: torch's default)")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                _add_threads(child)


def resolve_threads(args: argparse.Namespace) -> int | None:
    """The thread count for this run: ``--threads``, else ``$CINCER_THREADS``, else 1 (``None``: torch's default)."""
    value = getattr(args, "threads", None)
    if value is None:
        try:
            value = int(os.environ.get(THREADS_ENV, "1"))
        except ValueError:
            raise CincerError(f"${THREADS_ENV} must be an integer, got {os.environ[THREADS_ENV]!r}") from None
    if value < 0:
        raise CincerError(f"--threads must be >= 0 (0: torch's default), got {value}")
    return value or None


def set_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


def _version() -> str:
    from . import __version__

    return f"cincer {__version__}"


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (2 with a one-line message for bad input)."""
    from .plugins import load_plugins

    try:
        load_plugins()  # modules named in $CINCER_PLUGINS register their own inspectors/selectors
        args = build_parser().parse_args(argv)
        args.threads = resolve_threads(args)
        set_threads(args.threads)
        return int(args.func(args) or 0)
    except SystemExit as exit_:  # argparse: --help, --version, usage errors (already printed)
        return exit_.code if isinstance(exit_.code, int) else 2
    except CincerError as err:
        print(f"cincer: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cincer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
