"""Prompts through any kombu broker: ``PROMPT_TRANSPORT=kombu+<broker url>``.

For example ``kombu+amqp://guest:guest@host//`` (RabbitMQ), ``kombu+redis://host:6379/1``
or ``kombu+memory://`` (one process, for tests).

Features: one fanout exchange, ``eventsourcing.prompts``, with the leader's name as routing
key; each listening worker declares its own auto-deleted queue bound to it and keeps the
prompts of its leaders (kombu's Redis transport binds a queue to one fanout exchange only,
hence one exchange for all). Messages are JSON ``{"leader": ..., "id": ...}``, not
persistent; on Redis, fanout is PUBLISH/SUBSCRIBE, so nothing piles up for dead workers.

Guarantees: none beyond "usually fast": a prompt published while nobody listens is dropped
(the log is the delivery; workers poll). Install with ``pip install eventsourcing[kombu]``.

Outages: the URL and the broker's driver are checked when the transport is made
(:func:`check_broker_url`); the broker is not waited for. While it is down,
:meth:`~KombuTransport.wait` and :meth:`~KombuTransport.publish` raise
:class:`~runners.errors.TransportConnectionError` at once (one connection attempt, no
retries of kombu's own) and the next call connects afresh, declaring a new queue.
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from eventsourcing.utils import redact_url
from runners.errors import TransportConnectionError
from runners.transports.base import PromptTransport

try:
    # kombu has no type hints: treat it as Any rather than scatter ignores.
    kombu: Any = importlib.import_module("kombu")
    kombu_exceptions: Any = importlib.import_module("kombu.exceptions")
except ImportError as e:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "kombu prompt transport needs kombu: pip install 'eventsourcing[kombu]'"
    ) from e

__all__ = ["EXCHANGE_NAME", "KombuTransport", "check_broker_url"]

EXCHANGE_NAME = "eventsourcing.prompts"
MAX_WAIT_SECONDS = 1.0


def check_broker_url(broker_url: str) -> None:
    """Raise ValueError for a broker URL kombu can't parse or whose transport it doesn't
    know, and ImportError when the transport's driver is not installed (never connects)."""
    try:
        kombu.Connection(broker_url).transport  # noqa: B018 - resolves and imports the driver
    except KeyError as e:  # kombu's "No such transport: X. Did you mean Y?"
        raise ValueError(str(e.args[0]) if e.args else str(e)) from e
    except ImportError as e:
        scheme = broker_url.partition("://")[0]
        missing = f"needs {e.name}, which is not installed" if e.name else f"can't load: {e}"
        msg = (
            f"the kombu transport of {redact_url(broker_url)!r} {missing}; install "
            f"its driver: pip install 'kombu[{scheme}]'"
        )
        raise ImportError(msg) from e


def _exchange() -> Any:
    return kombu.Exchange(EXCHANGE_NAME, type="fanout", durable=False, auto_delete=True)


class KombuTransport(PromptTransport):
    """Publishes to and consumes from fanout exchanges on a kombu broker."""

    def __init__(self, broker_url: str, leaders: Iterable[str] = ()) -> None:
        """Use the broker at ``broker_url``; listen for ``leaders`` (connecting now, if any
        and if the broker answers: else :meth:`wait` connects once it does)."""
        check_broker_url(broker_url)
        super().__init__(leaders)
        self.broker_url = broker_url
        self._connection: Any = None
        self._producer: Any = None
        self._consumer: Any = None
        self._declared = False
        self._prompted: set[str] = set()
        if self.leaders:
            with suppress(TransportConnectionError), self._translated():
                self._listen()

    def _connect(self) -> Any:
        if self._connection is None:
            self._connection = kombu.Connection(
                self.broker_url, connect_timeout=2, transport_options={"max_retries": 0}
            )
            self._connection.ensure_connection(max_retries=0)  # the caller retries
        return self._connection

    def _listen(self) -> None:
        connection = self._connect()
        channel = connection.channel()
        queue = kombu.Queue(
            f"{EXCHANGE_NAME}.listener.{uuid.uuid4().hex}",
            exchange=_exchange(),
            routing_key="#",  # every leader (kombu's Redis transport matches it as a pattern)
            durable=False,
            auto_delete=True,
        )
        self._consumer = kombu.Consumer(
            channel,
            queues=[queue],
            callbacks=[self._on_message],
            accept=["json"],
            no_ack=True,
        )
        self._consumer.consume()

    def _on_message(self, body: Any, message: Any) -> None:
        leader = body.get("leader") if isinstance(body, dict) else None
        if isinstance(leader, str) and leader in self.leaders:
            self._prompted.add(leader)

    @contextmanager
    def _translated(self) -> Iterator[None]:
        errors: tuple[type[BaseException], ...] = (
            OSError,
            kombu_exceptions.OperationalError,  # ensure_connection's wrapper of them
            *self._driver_errors(),
        )
        try:
            yield
        except errors as e:
            self._reset()
            raise TransportConnectionError(f"kombu broker {self._safe_url()}: {e!r}") from e

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        connection = self._connection or kombu.Connection(self.broker_url)
        return tuple(connection.connection_errors) + tuple(connection.channel_errors)

    def _safe_url(self) -> str:
        return redact_url(self.broker_url)

    def _reset(self) -> None:
        """Drop the connection after a failure; the next call connects afresh."""
        connection, self._connection = self._connection, None
        self._producer = self._consumer = None
        self._declared = False
        if connection is not None:
            with suppress(Exception):  # a dead connection may fail to close; it's dropped
                connection.close()

    def publish(self, leader_name: str, notification_id: int) -> None:
        """Publish a prompt on the leader's fanout exchange."""
        with self._translated():
            if self._producer is None:
                self._producer = kombu.Producer(self._connect().channel())
            exchange = _exchange()
            declare = [] if self._declared else [exchange]
            self._producer.publish(
                {"leader": leader_name, "id": notification_id},
                exchange=exchange,
                routing_key=leader_name,
                serializer="json",
                delivery_mode=1,
                declare=declare,
                retry=False,
            )
            self._declared = True

    def wait(self, timeout: float) -> list[str]:
        """Drain the broker's messages for up to ``timeout`` (at most a second)."""
        if not self.leaders:
            return []
        with self._translated():
            if self._consumer is None:
                self._listen()
            with suppress(TimeoutError):  # nothing came
                self._connect().drain_events(timeout=max(0.001, min(timeout, MAX_WAIT_SECONDS)))
        prompted, self._prompted = self._prompted, set()
        return sorted(prompted)

    def close(self) -> None:
        """Close the connection (the broker deletes this listener's queue)."""
        self._reset()
