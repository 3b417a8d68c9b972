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
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for module in COMMANDS:
        importlib.import_module(module).add_parser(sub)
    return parser


def _version() -> str:
    from . import __version__  # noqa: PLC0415

    return f"cincer {__version__}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CincerError as err:
        print(f"cincer: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cincer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
