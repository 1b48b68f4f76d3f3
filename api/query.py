"""Query-string parameters: the parsers of integer and free-text parameters that every surface (REST, OpenAI,
admin) uses.

A bad value is an `InvalidField` naming the parameter; each surface renders it in its own error shape.
"""

from __future__ import annotations

from collections.abc import Mapping

from api.errors import InvalidField

# More digits than any bound we use: refused before int() sees them (Python refuses 4,300+ digits itself).
_MAX_DIGITS = 18


def integer_parameter(args: Mapping[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    """`args[name]` as an integer in [minimum, maximum], `default` when absent; InvalidField otherwise.

    Only ASCII digits count: `str.isdigit()` alone admits "²" and "٣", which `int()` then refuses or reads.
    """
    raw = args.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= _MAX_DIGITS and minimum <= int(raw) <= maximum):
        raise InvalidField(name, f"must be an integer between {minimum} and {maximum}")
    return int(raw)


def text_parameter(args: Mapping[str, str], name: str, default: str = "") -> str:
    """`args[name]` as free text to compare in SQL, `default` when absent; InvalidField when it holds a NUL
    character, which Postgres text cannot hold (a query with one fails as a whole)."""
    raw = args.get(name)
    if raw is None:
        return default
    if "\x00" in raw:
        raise InvalidField(name, "must not contain NUL characters")
    return raw
