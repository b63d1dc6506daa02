"""Named plug-in tables: serving backends, rollout gates, online scorers, alert channels.

One rule for all of them: a name is registered once, and an unknown name is refused with the
names that are known.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one kind by name; `what` names the kind in errors ("serving backend")."""

    def __init__(self, what: str, error: type[Exception] = KeyError) -> None:
        self.what = what
        self.error = error  # raised for an unknown name
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register `entry` under `name`.

        Raises:
            ValueError: when `name` is registered already.
        """
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator that registers what it decorates under `name`."""
        return lambda entry: self.add(name, entry)

    def get(self, name: str) -> T:
        """The entry named `name`; `self.error` names the known ones when there is none."""
        if name not in self._entries:
            raise self.error(f"unknown {self.what} {name!r}; known: {', '.join(self.names()) or 'none'}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
