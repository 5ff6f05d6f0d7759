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

``PROMPT_TRANSPORT`` is read and checked in one place, :func:`parse_prompt_transport` (and
:func:`prompt_transport_in`, for an application's environment), with one message listing
:data:`ACCEPTED_FORMS`. :mod:`runners.transports.publisher` sends an application's prompts;
``eventsourcing.application`` finds it through the entry-point group
``eventsourcing.prompt_publisher`` (declared in pyproject.toml), never by importing it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from eventsourcing.utils import Environment, redact_url
from runners.errors import PromptTransportError, did_you_mean
from runners.transports.base import PromptTransport

__all__ = [
    "ACCEPTED_FORMS",
    "PromptTransport",
    "PromptTransportSetting",
    "check_transport_url",
    "open_transport",
    "parse_prompt_transport",
    "prompt_transport_in",
]

PROMPT_TRANSPORT = "PROMPT_TRANSPORT"
ACCEPTED_FORMS = (
    "redis://HOST:PORT/DB or rediss://... (Redis Streams), kombu+<broker url> such as "
    "kombu+amqp://guest:guest@HOST// or kombu+redis://HOST:6379/1, postgres (LISTEN/NOTIFY), "
    "memory://NAME (one process), or leave it unset to poll"
)
# scheme as typed -> the name the transport is known by
SCHEMES = {
    "redis": "redis",
    "rediss": "redis",
    "kombu": "kombu",
    "postgres": "postgres",
    "memory": "memory",
}


@dataclass(frozen=True)
class PromptTransportSetting:
    """A valid ``PROMPT_TRANSPORT``: the transport it names, its value, and its variable."""

    kind: str  #: redis, kombu, postgres or memory
    url: str  #: the value, without surrounding spaces
    source: str = PROMPT_TRANSPORT  #: the variable it came from, for messages

    def __str__(self) -> str:
        """The value without its credentials, for messages and log lines."""
        return redact_url(self.url)


def parse_prompt_transport(
    value: str | None, source: str = PROMPT_TRANSPORT
) -> PromptTransportSetting | None:
    """The one parser of ``PROMPT_TRANSPORT``: None when ``value`` is unset or blank, else
    the transport it names.

    Raises :class:`~runners.errors.PromptTransportError` (a ValueError) naming ``source``,
    the variable the value came from, and the accepted forms for a value that names none.
    """
    url = (value or "").strip()
    if not url:
        return None
    scheme = url.split("+", 1)[0] if url.startswith("kombu+") else url.partition("://")[0]
    kind = SCHEMES.get(scheme)
    if kind == "kombu" and not url.partition("+")[2]:
        kind = None
    if kind in ("redis", "memory") and "://" not in url:
        kind = None
    if kind is None:
        hint = did_you_mean(scheme, list(SCHEMES))
        raise PromptTransportError(_invalid(url, source, hint=hint))
    return PromptTransportSetting(kind, url, source)


def prompt_transport_in(env: Environment) -> PromptTransportSetting | None:
    """The ``PROMPT_TRANSPORT`` of an application's ``env`` (its name-prefixed variable
    first), parsed by :func:`parse_prompt_transport`; None when unset."""
    prefixed = env.create_keys(PROMPT_TRANSPORT)[0]
    source = prefixed if prefixed in env else PROMPT_TRANSPORT
    return parse_prompt_transport(env.get(PROMPT_TRANSPORT), source)


def check_transport_url(url: str, source: str = PROMPT_TRANSPORT) -> str:
    """The name of the transport ``url`` names (see :func:`parse_prompt_transport`), or
    raise :class:`PromptTransportError`, for a blank ``url`` too."""
    return _required(url, source).kind


def _required(url: str, source: str) -> PromptTransportSetting:
    setting = parse_prompt_transport(url, source)
    if setting is None:
        raise PromptTransportError(_invalid(url, source))
    return setting


def _invalid(url: str, source: str, why: str = "", hint: str = "") -> str:
    """The one message for a bad ``PROMPT_TRANSPORT``: why (a sentence) or a "did you
    mean" ``hint``, the accepted forms, and the fix."""
    value = f"Invalid {source} value {redact_url(url)!r}"
    return (
        f"{value}{f': {why}' if why else '.'}{hint} Accepted forms: {ACCEPTED_FORMS}. "
        f"Fix {source} (or unset it)."
    )


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
    setting = _required(url, source)
    try:
        return _open(setting.kind, setting.url, leaders, recorders or {})
    except PromptTransportError:
        raise
    except ImportError as e:
        msg = f"Can't use {source}={redact_url(url)!r}: {e}"
        raise PromptTransportError(msg) from e
    except ValueError as e:
        raise PromptTransportError(_invalid(url, source, why=_sentence(e))) from e


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
