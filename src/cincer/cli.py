"""The ``cincer`` command line. Each sub-command lives in its own module exposing ``add_parser``."""

from __future__ import annotations

import argparse
import importlib
import sys

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
]


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad usage on a single line (exit 2), without the usage block."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="cincer", description="Interactive label cleaning with example-based explanations.")
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--threads", type=int, default=None,
                        help="PyTorch CPU threads (default: $CINCER_THREADS or 1; the paper's small "
                             "networks train fastest on one thread, and several jobs share the cores)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for module in COMMANDS:
        importlib.import_module(module).add_parser(sub)
    return parser


def set_threads(threads: int | None) -> None:
    import os

    import torch

    threads = threads if threads is not None else int(os.environ.get("CINCER_THREADS", "1"))
    if threads < 1:
        raise CincerError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)


def _version() -> str:
    from . import __version__  # noqa: PLC0415

    return f"cincer {__version__}"


def main(argv: list[str] | None = None) -> int:
    from .api import load_plugins

    try:
        load_plugins()  # modules named in $CINCER_PLUGINS register their own inspectors/selectors
    except CincerError as err:
        print(f"cincer: error: {err}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    try:
        set_threads(args.threads)
        return int(args.func(args) or 0)
    except CincerError as err:
        print(f"cincer: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cincer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
