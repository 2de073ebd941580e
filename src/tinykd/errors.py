"""User-facing errors.

A `TinykdError` is a mistake in what the user asked for (a recipe, a name, a
file). The CLI prints its message on one line and exits with code 2; every
other exception is a bug in tinykd and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TinykdError(Exception):
    """A problem with the user's input, reported as one line, exit code 2."""


def close_matches(name: str, choices: Iterable[str], n: int = 5) -> str:
    """Return ' (did you mean: a, b?)' for names near `name`, or ''."""
    found = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" (did you mean: {', '.join(found)}?)" if found else ""
