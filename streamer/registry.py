"""Registries: the kinds of one thing (sink, head, feature front-end, source) by name.

A new kind is its own module and one registration line (``SINKS.register("jsonl", ...)``
in its package's ``__init__``); the pipeline file's schema, the builder and the error
messages read the names from here instead of an ``if`` chain per place.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from streamer.errors import InputError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind (``what``: "sink", "head" ...), in registration order."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` as ``name``; a name registered twice is a programming error."""
        if name in self._entries:
            raise ValueError(f"{self.what} '{name}' is registered already")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """The entry ``name``; an unknown name is refused naming the known ones."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(f"'{n}'" for n in self._entries)
            raise InputError(f"unknown {self.what} '{name}' (known: {known})") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def values(self) -> list[T]:
        return list(self._entries.values())
