"""JSON parsing with a nesting bound, for every body that comes from outside.

Python's decoder recurses once per level: a body of a few kilobytes of ``[[[[...`` raises
RecursionError instead of ValueError, and code that walks the result recurses as deep
again. ``loads`` turns both into a ValueError (``TooDeep``) so every caller's existing
"not valid JSON" answer covers it; no legitimate body here nests more than a few levels.
"""

from __future__ import annotations

import json

from flask.json.provider import DefaultJSONProvider

MAX_DEPTH = 32


class TooDeep(ValueError):
    """The document nests arrays and objects more than MAX_DEPTH levels deep."""

    def __init__(self) -> None:
        super().__init__(f"JSON nested more than {MAX_DEPTH} levels deep")


def nests_deeper_than(value: object, limit: int) -> bool:
    """True when ``value`` holds containers more than ``limit`` levels deep (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


class NotJSON(ValueError):
    """``NaN``, ``Infinity`` or ``-Infinity``: Python's decoder reads them, JSON has no such values."""

    def __init__(self, constant: str) -> None:
        super().__init__(f"{constant} is not a JSON value")


def _refuse_constant(constant: str) -> object:
    raise NotJSON(constant)


def loads(data: str | bytes, **kwargs) -> object:
    """``json.loads`` that raises ValueError (never RecursionError), refuses deep nesting and
    the non-JSON constants ``NaN`` and ``Infinity`` (no float may sneak in as a number)."""
    kwargs.setdefault("parse_constant", _refuse_constant)
    try:
        value = json.loads(data, **kwargs)
    except RecursionError:
        raise TooDeep() from None
    if nests_deeper_than(value, MAX_DEPTH):
        raise TooDeep()
    return value


class BoundedJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider with ``loads`` bounded, so ``request.get_json`` never overflows."""

    def loads(self, s: str | bytes, **kwargs) -> object:
        return loads(s, **kwargs)
