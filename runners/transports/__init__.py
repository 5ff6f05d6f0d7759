"""Prompt transports, and the one table that maps ``PROMPT_TRANSPORT`` values to them.

==============================  ============================================  =========
``PROMPT_TRANSPORT``            transport                                      module
==============================  ============================================  =========
``redis://...``, ``rediss://``  Redis Streams, one stream per leader           redis
``kombu+<broker url>``          any kombu broker (AMQP, Redis, memory, ...)    kombu
``postgres``                    LISTEN/NOTIFY on the leaders' databases        postgres
``memory://NAME``               threads of one process (tests)                 memory
unset                           none: workers poll                             -
==============================  ============================================  =========

``eventsourcing.application`` finds :func:`open_transport` through the entry-point group
``eventsourcing.prompt_transports`` (declared in pyproject.toml), never by importing this
package.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from eventsourcing.utils import redact_url
from runners.errors import PromptTransportError, did_you_mean
from runners.transports.base import PromptTransport

__all__ = ["ACCEPTED_FORMS", "PromptTransport", "check_transport_url", "open_transport"]

ACCEPTED_FORMS = (
    "redis://HOST:PORT/DB or rediss://... (Redis Streams), kombu+<broker url> such as "
    "kombu+amqp://guest:guest@HOST// or kombu+redis://HOST:6379/1, postgres (LISTEN/NOTIFY), "
    "memory://NAME (one process), or leave it unset to poll"
)
# scheme as typed -> the name the transport is known by
SCHEMES = {"redis": "redis", "rediss": "redis", "kombu": "kombu", "postgres": "postgres",
           "memory": "memory"}  # fmt: skip


def check_transport_url(url: str, source: str = "PROMPT_TRANSPORT") -> str:
    """Return the transport ``url`` names, or raise :class:`PromptTransportError`.

    ``source`` says where the value came from, for the message.
    """
    scheme = url.split("+", 1)[0] if url.startswith("kombu+") else url.partition("://")[0]
    kind = SCHEMES.get(scheme)
    if kind == "kombu" and not url.partition("+")[2]:
        kind = None
    if kind in ("redis", "memory") and "://" not in url:
        kind = None
    if kind is None:
        hint = did_you_mean(scheme, list(SCHEMES))
        msg = (
            f"Invalid {source} value {url!r}.{hint} Accepted forms: {ACCEPTED_FORMS}. "
            f"Fix {source} (or unset it)."
        )
        raise PromptTransportError(msg)
    return kind


def open_transport(
    url: str,
    leaders: Iterable[str] = (),
    *,
    recorders: Mapping[str, Any] | None = None,
    source: str = "PROMPT_TRANSPORT",
) -> PromptTransport:
    """Open the transport ``url`` names, listening for ``leaders`` (none: publish only).

    ``recorders`` maps leader names to their application recorders, which the ``postgres``
    transport listens on. Raises :class:`~runners.errors.PromptTransportError` for a bad
    ``url`` and for a transport whose extra is not installed. Never fails because the server
    is unreachable: the transport connects when it is used, and while its server is down
    ``wait`` and ``publish`` raise :class:`~runners.errors.TransportConnectionError`.
    """
    kind = check_transport_url(url, source)
    try:
        return _open(kind, url, leaders, recorders or {})
    except PromptTransportError:
        raise
    except ImportError as e:
        msg = f"Can't use {source}={redact_url(url)!r}: {e}"
        raise PromptTransportError(msg) from e
    except ValueError as e:
        msg = (
            f"Invalid {source} value {redact_url(url)!r}: {_sentence(e)} Accepted forms: "
            f"{ACCEPTED_FORMS}. Fix {source} (or unset it)."
        )
        raise PromptTransportError(msg) from e


def _open(
    kind: str, url: str, leaders: Iterable[str], recorders: Mapping[str, Any]
) -> PromptTransport:
    if kind == "redis":
        from runners.transports.redis import RedisStreamsTransport

        return RedisStreamsTransport(url, leaders)
    if kind == "kombu":
        from runners.transports.kombu import KombuTransport

        return KombuTransport(url.partition("+")[2], leaders)
    if kind == "postgres":
        from runners.transports.postgres import PostgresNotifyTransport

        listen = set(leaders)
        return PostgresNotifyTransport({n: r for n, r in recorders.items() if n in listen})
    from runners.transports.memory import MemoryTransport

    return MemoryTransport(url.partition("://")[2], leaders)


def _sentence(error: Exception) -> str:
    """``error``'s message as one sentence, ending with its own stop or with one added."""
    text = " ".join(str(error).split())
    return text if text.endswith((".", "?", "!")) else f"{text}."
