"""One small registry for models, losses and datasets.

Names are explicit: built-in entries are registered by modules that the
package imports on purpose, and a duplicate name is an error unless
`override=True` is given, so a plug-in never replaces a built-in silently.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from tinykd.errors import TinykdError, close_matches

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object table with helpful errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str | None = None, *, override: bool = False) -> Callable[[T], T]:
        """Decorator: register an object under `name` (default: its `__name__`)."""

        def add(obj: T) -> T:
            key = name or obj.__name__  # type: ignore[attr-defined]
            if key in self._entries and not override:
                raise ValueError(f"{self.kind} '{key}' is already registered; pass override=True to replace it")
            self._entries[key] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        """Look a name up; an unknown name raises a `TinykdError` listing the known ones."""
        if name not in self._entries:
            raise TinykdError(
                f"unknown {self.kind} '{name}'{close_matches(name, self._entries)}; "
                f"known: {', '.join(sorted(self._entries))}"
            )
        return self._entries[name]

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted names matching a shell-style wildcard, e.g. `resnet*`."""
        return sorted(k for k in self._entries if fnmatch.fnmatch(k, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
