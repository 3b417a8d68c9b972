"""Name -> factory registries, so a new dataset, inspector or selector is one function and one line."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import CincerError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of factories; ``@REGISTRY.register("name")`` adds one."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            self._items[name] = item
            return item

        return add

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items))
            raise CincerError(f"unknown {self.kind} {name!r} (choose from: {known})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)
