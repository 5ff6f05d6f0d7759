"""Identifiers: checking, quoting and clipping the names that reach SQL."""

from __future__ import annotations

from psycopg.sql import Identifier

from eventsourcing.persistence import ProgrammingError

# PostgreSQL keeps at most NAMEDATALEN - 1 = 63 bytes of an identifier and silently cuts
# longer ones, so two long names could end up naming one table: refuse them instead.
MAX_IDENTIFIER_BYTES = 63


def check_identifier(name: str, what: str = "identifier") -> str:
    """Return ``name`` if PostgreSQL can hold it as an identifier, else raise ProgrammingError.

    Quotes, semicolons and any other characters are fine, since names are only ever passed
    to SQL as quoted identifiers; the limits are 1-63 bytes of UTF-8 and no NUL character.
    """
    size = len(name.encode("utf8"))
    if size > MAX_IDENTIFIER_BYTES:
        raise ProgrammingError(
            f"Identifier too long: {name!r} ({what}) is {size} bytes of UTF-8, and PostgreSQL "
            f"keeps only {MAX_IDENTIFIER_BYTES}; use a shorter application or table name"
        )
    if not name or "\x00" in name:
        raise ProgrammingError(
            f"Invalid {what} {name!r}: PostgreSQL identifiers can't be empty or contain NUL"
        )
    return name


def quoted(name: str) -> Identifier:
    """Return ``name`` as a quoted identifier for statements run with parameters.

    psycopg reads ``%`` in a statement as the start of a placeholder, even inside a quoted
    identifier, so it is doubled here; every statement built from these is executed with a
    parameter sequence (empty if need be), which turns ``%%`` back into ``%``.
    """
    return Identifier(name.replace("%", "%%"))


NO_PARAMS: tuple[()] = ()


def _pg_quote(name: str) -> str:
    """Quote ``name`` as PostgreSQL does, for functions that parse names from strings."""
    return '"' + name.replace('"', '""') + '"'


def clip_identifier(name: str) -> str:
    """Cut ``name`` to 63 bytes at a character boundary, as PostgreSQL itself does."""
    encoded = name.encode("utf8")
    if len(encoded) <= MAX_IDENTIFIER_BYTES:
        return name
    return encoded[:MAX_IDENTIFIER_BYTES].decode("utf8", errors="ignore")
