"""Name -> factory registries, so a new dataset, inspector or selector is one function and one line.

A registry of factories (``Registry(kind, factories=True)``) checks the keyword parameters of every
call against the factory's signature: a misspelt parameter is a :class:`CincerError` naming the ones
the factory takes, never silently ignored.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .errors import CincerError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection; ``@REGISTRY.register("name")`` adds one, ``REGISTRY[name]`` looks it up."""

    def __init__(self, kind: str, *, factories: bool = False) -> None:
        self.kind = kind
        self.factories = factories
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if self.factories:  # T is then a callable type, and so is its checked wrapper
                self._items[name] = _checked(self.kind, name, item)  # type: ignore[arg-type, assignment]
            else:
                self._items[name] = item
            return item

        return add

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise CincerError(f"unknown {self.kind} {name!r} (choose from: {', '.join(self.names())})") from None

    def create(self, name: str, /, **params: Any) -> Any:
        """``REGISTRY[name](**params)``: the named factory called with checked parameters."""
        return self[name](**params)  # type: ignore[operator]

    def parameters(self, name: str) -> list[str] | None:
        """The keyword parameters the factory ``name`` takes (``None``: any, it has ``**kwargs``)."""
        return _keywords(self[name])

    def accepts(self, name: str, param: str) -> bool:
        names = self.parameters(name)
        return names is None or param in names

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def names(self) -> list[str]:
        return sorted(self._items)


def _keywords(factory: Any) -> list[str] | None:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in params if p.kind in named]


def _checked(kind: str, name: str, factory: Callable) -> Callable:
    """``factory`` that turns a call with parameters it does not take into a one-line CincerError."""
    signature = inspect.signature(factory)

    @functools.wraps(factory)
    def create(*args: Any, **params: Any) -> Any:
        try:
            signature.bind(*args, **params)
        except TypeError as err:
            takes = _keywords(factory)
            unknown = sorted(set(params) - set(params if takes is None else takes))
            what = f"unknown parameter {unknown[0]!r}" if unknown else str(err)
            choices = ", ".join(takes) if takes else "none"
            raise CincerError(f"{kind} {name!r}: {what} (it takes: {choices})") from None
        return factory(*args, **params)

    return create
