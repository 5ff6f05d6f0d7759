"""Prompts through Redis Streams: ``PROMPT_TRANSPORT=redis://host:6379/0`` (or ``rediss://``).

Features: one stream per leader, ``eventsourcing:prompts:<leader>``; a prompt is one entry
(``XADD ... MAXLEN ~ 100``, so a stream never holds more than about a hundred entries); a
worker reads the streams of all its leaders with one blocking ``XREAD``, so a prompt wakes it
within a round trip. Every listener sees every entry (fan-out without consumer groups).

Connection string: any URL redis-py's ``Redis.from_url`` accepts.

Guarantees: none beyond "usually fast". An entry written while a worker was away is seen
when it comes back (if not trimmed); a Redis restart loses the streams, which is harmless:
the workers poll the leaders' logs meanwhile. Install with ``pip install eventsourcing[redis]``.

Outages: nothing here waits for Redis. A transport opened while Redis is down is opened all
the same; until Redis answers, :meth:`~RedisStreamsTransport.wait` and
:meth:`~RedisStreamsTransport.publish` raise
:class:`~runners.errors.TransportConnectionError` (the worker polls meanwhile), and each call
tries to connect afresh. A listener that first connects late reads its streams from the
start: at worst one wake-up that finds nothing new, never a missed prompt.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from eventsourcing.utils import redact_url
from runners.errors import TransportConnectionError
from runners.transports.base import PromptTransport

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError as e:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "Redis prompt transport needs redis-py: pip install 'eventsourcing[redis]'"
    ) from e

__all__ = ["STREAM_PREFIX", "RedisStreamsTransport", "redis_client"]

STREAM_PREFIX = "eventsourcing:prompts:"
MAX_STREAM_LENGTH = 100
# A blocking read never waits longer than this, so that a stopping worker notices soon.
MAX_BLOCK_SECONDS = 1.0


def redis_client(url: str) -> redis.Redis:
    """Return a client that fails fast: no retries of its own, short connect timeout.

    The worker loop and the publishers decide when to try again (redis-py's default retries
    would stall a save for seconds while the server is down). Connects on first use; raises
    ValueError for a URL redis-py can't parse, or whose database is not a number.
    """
    _check_database(url)
    client = redis.Redis.from_url(
        url,
        socket_connect_timeout=2.0,
        socket_timeout=MAX_BLOCK_SECONDS + 5.0,
        retry=Retry(NoBackoff(), 0),
    )
    pool = client.connection_pool
    try:  # a connection made (not opened) now, so that a bad option fails now, not later
        pool.connection_class(**pool.connection_kwargs)
    except TypeError as e:
        raise ValueError(f"an option in the URL's query is not one redis-py takes: {e}") from e
    return client


def _check_database(url: str) -> None:
    """Raise ValueError unless ``url``'s path is empty or a database number (redis-py
    would quietly use database 0 for ``redis://host:6379/x``)."""
    _, sep, rest = url.partition("://")
    path = rest.partition("?")[0].partition("/")[2] if sep else ""
    if path and not path.isdigit():
        msg = f"the database in the URL's path must be a number, such as /0, not /{path}"
        raise ValueError(msg)


@contextmanager
def _translated(url: str) -> Iterator[None]:
    try:
        yield
    except (redis.RedisError, OSError) as e:
        raise TransportConnectionError(f"Redis at {redact_url(url)}: {e}") from e


class RedisStreamsTransport(PromptTransport):
    """Publishes to and reads from one Redis stream per leader."""

    def __init__(self, url: str, leaders: Iterable[str] = ()) -> None:
        """Use Redis at ``url``; listen for ``leaders`` from their streams' current ends (or,
        if Redis is down now, from the streams' starts once it answers)."""
        super().__init__(leaders)
        self.url = url
        self._client = redis_client(url)
        self._last_ids = dict.fromkeys((STREAM_PREFIX + n for n in sorted(self.leaders)), "0-0")
        if self.leaders:
            with suppress(TransportConnectionError):  # down: wait() says so, and reconnects
                self._last_ids = self._stream_ends()

    def _stream_ends(self) -> dict[str, str]:
        ends: dict[str, str] = {}
        with _translated(self.url):
            for leader in sorted(self.leaders):
                key = STREAM_PREFIX + leader
                last = self._client.xrevrange(key, count=1)
                ends[key] = _as_str(last[0][0]) if last else "0-0"
        return ends

    def publish(self, leader_name: str, notification_id: int) -> None:
        """Append a prompt to the leader's stream, trimming old entries."""
        with _translated(self.url):
            self._client.xadd(
                STREAM_PREFIX + leader_name,
                {"id": str(notification_id)},
                maxlen=MAX_STREAM_LENGTH,
                approximate=True,
            )

    def wait(self, timeout: float) -> list[str]:
        """Block on the leaders' streams for up to ``timeout`` (at most a second)."""
        if not self._last_ids:
            return []
        block_ms = max(1, int(min(timeout, MAX_BLOCK_SECONDS) * 1000))
        with _translated(self.url):
            replies: Any = self._client.xread(
                self._last_ids,  # type: ignore[arg-type]
                count=MAX_STREAM_LENGTH,
                block=block_ms,
            )
        prompted: list[str] = []
        for key, entries in replies or ():
            stream = _as_str(key)
            if entries:
                self._last_ids[stream] = _as_str(entries[-1][0])
                prompted.append(stream.removeprefix(STREAM_PREFIX))
        return prompted

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()


def _as_str(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
