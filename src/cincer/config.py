"""Configuration dataclasses with their help text next to each field.

A field made with :func:`option` carries its help text, its command-line flag and its check, so
every command's arguments are generated from the dataclass (:meth:`Config.add_arguments`), a
configuration reads back from JSON (:meth:`Config.from_dict`), and :meth:`Config.validate` checks
every field in one place with one-line :class:`~cincer.errors.CincerError` messages.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Iterator
from dataclasses import MISSING, field
from typing import Any

from .errors import CincerError

Check = Callable[[str, Any], None]


def option(default: Any = MISSING, help: str = "", *, default_factory: Any = MISSING, flag: str | None = None,
           check: Check | None = None, cli: bool = True) -> Any:
    """A dataclass field with its ``help`` text, its CLI ``flag`` (default ``--field-name``), a ``check``
    run by :meth:`Config.validate`, and ``cli=False`` for fields no command line sets."""
    metadata = {"help": help, "flag": flag, "check": check, "cli": cli}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# --------------------------------------------------------------------------- checks

def at_least(low: float) -> Check:
    def check(name: str, value: Any) -> None:
        if value is not None and value < low:
            raise CincerError(f"{name} must be at least {low:g}, got {value}")
    return check


def positive(name: str, value: Any) -> None:
    if not value > 0:
        raise CincerError(f"{name} must be > 0, got {value}")


def in_interval(low: float, high: float, *, closed: str = "[)") -> Check:
    """``closed`` gives the brackets: ``"[)"`` is ``low <= v < high``, ``"()"`` both open, ..."""
    def check(name: str, value: Any) -> None:
        ok_low = value >= low if closed[0] == "[" else value > low
        ok_high = value <= high if closed[1] == "]" else value < high
        if not (ok_low and ok_high):
            raise CincerError(f"{name} must be in {closed[0]}{low:g}, {high:g}{closed[1]}, got {value}")
    return check


def one_of(*choices: Any) -> Check:
    def check(name: str, value: Any) -> None:
        if value not in choices:
            raise CincerError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return check


def registered(registry: Any) -> Check:
    """The value names an entry of ``registry`` (its lookup raises the error listing the choices)."""
    def check(name: str, value: Any) -> None:
        registry[value]
    return check


# --------------------------------------------------------------------------- the base class

class Config:
    """Base of every configuration dataclass (subclasses are ``@dataclass``)."""

    def validate(self) -> None:
        """Run every field's check (nested configurations included); subclasses add cross-field checks."""
        for f, value in self._fields():
            if isinstance(value, Config):
                value.validate()
            elif f.metadata.get("check") is not None:
                f.metadata["check"](flag_of(f), value)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict) -> Any:
        """Rebuild from :meth:`to_dict`'s output; an unknown key is an error that lists the known ones."""
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise CincerError(f"unknown {cls.__name__} setting(s): {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(names))})")
        values = {}
        for key, value in data.items():
            nested = _nested_config(hints[key])
            values[key] = nested.from_dict(value) if nested is not None and isinstance(value, dict) else value
        return cls(**values)

    def _fields(self) -> Iterator[tuple[dataclasses.Field, Any]]:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            yield f, getattr(self, f.name)

    # ------------------------------------------------------------------- command line
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, *, exclude: tuple[str, ...] = (),
                      defaults: Config | None = None, prefix: str = "") -> None:
        """One argument per CLI field (nested configurations flattened, each argument stored under its
        field's path, e.g. ``influence.damping``, so equal field names never collide). Arguments not given
        are absent from the parsed namespace, so :meth:`from_args` can lay them over any base."""
        base = defaults if defaults is not None else cls()
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in exclude or not f.metadata.get("cli", True):
                continue
            value = getattr(base, f.name)
            nested = _nested_config(hints[f.name])
            if nested is not None:
                nested.add_arguments(parser, exclude=exclude, defaults=value, prefix=f"{prefix}{f.name}.")
                continue
            kind = _scalar_type(hints[f.name])
            help_text = f.metadata.get("help", "")
            shown = "all" if value is None and f.name == "fim_samples" else value
            kwargs: dict[str, Any] = {"dest": prefix + f.name, "default": argparse.SUPPRESS,
                                      "help": f"{help_text} (default: {shown})" if help_text else f"(default: {shown})"}
            if kind is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs["type"] = kind
                kwargs["metavar"] = f.name.upper()
            parser.add_argument(flag_of(f), **kwargs)

    @classmethod
    def from_args(cls, args: argparse.Namespace, base: Config | None = None, *, prefix: str = "") -> Any:
        """``base`` (default: the defaults) with every field given on the command line replaced."""
        base = base if base is not None else cls()
        hints = typing.get_type_hints(cls)
        given = vars(args)
        changes = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            nested = _nested_config(hints[f.name])
            if nested is not None:
                changes[f.name] = nested.from_args(args, getattr(base, f.name), prefix=f"{prefix}{f.name}.")
            elif f.metadata.get("cli", True) and prefix + f.name in given:
                changes[f.name] = given[prefix + f.name]
        return dataclasses.replace(base, **changes)  # type: ignore[type-var]


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _nested_config(hint: Any) -> type[Config] | None:
    return hint if isinstance(hint, type) and issubclass(hint, Config) else None


def _scalar_type(hint: Any) -> Callable[[str], Any]:
    """``int``, ``float``, ``str`` or ``bool`` from a hint such as ``int | None``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    kind = args[0]
    return kind if kind in (int, float, str, bool) else str
