"""Database and table names: which are in memory, which are safe to put into SQL."""

from __future__ import annotations

import re

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")


def is_memory_db_name(db_name: str | None) -> bool:
    """Say whether an SQLite database name refers to an in-memory database."""
    return bool(db_name) and (":memory:" in str(db_name) or "mode=memory" in str(db_name))


def _check_identifier(name: str) -> str:
    """Return a table name unchanged if it is safe to put into SQL text."""
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        msg = (
            f"Invalid SQLite table name {name!r}: use letters, digits and underscores, "
            "optionally prefixed with a schema name and a dot"
        )
        raise ValueError(msg)
    return name
