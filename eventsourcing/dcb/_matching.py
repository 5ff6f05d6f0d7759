"""Deciding in Python whether an event matches a query (for the in-memory recorder)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from eventsourcing.dcb.api import DCBEvent, DCBQuery

Matcher = Callable[["DCBEvent"], bool]


def _match_all(_: DCBEvent) -> bool:
    return True


def compile_query(query: DCBQuery | None) -> Matcher:
    """Return a function that says whether an event matches ``query``.

    The query's types and tags are made into sets once, not once per event.
    """
    if query is None or not query.items:
        return _match_all
    items = [(frozenset(item.types), frozenset(item.tags)) for item in query.items]

    def matches(event: DCBEvent) -> bool:
        event_tags = event.tags
        for types, tags in items:
            if types and event.type not in types:
                continue
            if tags.issubset(event_tags):
                return True
        return False

    return matches
