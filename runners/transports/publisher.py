"""Publishing an application's prompts to followers in other processes.

Any process whose application names a ``PROMPT_TRANSPORT`` (a worker, a web request, a
script) publishes a prompt after each save: ``eventsourcing.application`` asks
:func:`publisher_for` (through the entry-point group ``eventsourcing.prompt_publisher``,
declared in pyproject.toml), and a worker wraps the transport it listens on in a
:class:`PromptPublisher` of its own.

Guarantees: a save never waits for the broker and never fails because of it; prompts of
saves made while one is being sent are coalesced into one (the latest id of each
application). A prompt is only a wake-up: followers that miss one catch up by polling.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import suppress
from typing import Protocol

from eventsourcing.utils import Environment
from runners.transports import open_transport, prompt_transport_in

__all__ = ["PromptPublisher", "publisher_for"]

# The lines keep the logger they had when the publisher lived in eventsourcing.application.
logger = logging.getLogger("eventsourcing.application")


class _Transport(Protocol):
    def publish(self, leader_name: str, notification_id: int) -> None: ...

    def close(self) -> None: ...


def publisher_for(env: Environment) -> PromptPublisher | None:
    """A publisher for the ``PROMPT_TRANSPORT`` of an application's ``env``, or None if
    unset; raises :class:`~runners.errors.PromptTransportError` (a ValueError) naming the
    variable and the accepted forms for a bad value."""
    setting = prompt_transport_in(env)
    if setting is None:
        return None
    return PromptPublisher(open_transport(setting.url, source=setting.source), str(setting))


class PromptPublisher:
    """Tells followers in other processes that an application has new notifications.

    :meth:`publish` only notes the new id; a thread of the publisher sends the prompts, so a
    save never waits for the broker's round trip, and prompts of saves made meanwhile are
    coalesced into one. A prompt is only a wake-up, so publishing never fails a command: a
    failure is logged once (and its recovery once), and for a second after a failure prompts
    are dropped rather than tried again. Followers catch up by polling meanwhile.
    """

    RETRY_AFTER = 1.0  # seconds without attempts after a failure

    def __init__(self, transport: _Transport, description: str = "") -> None:
        """Publish through ``transport``, described as ``description`` in log lines."""
        self.transport = transport
        self.description = description or type(transport).__name__
        self._condition = threading.Condition()
        self._pending: dict[str, int] = {}
        self._sender: threading.Thread | None = None
        self._sender_pid = 0
        self._closed = False
        self._failing = False
        self._retry_at = 0.0

    @classmethod
    def from_env(cls, env: Environment) -> PromptPublisher | None:
        """Return a publisher for the ``PROMPT_TRANSPORT`` in ``env``, or None if unset
        (:func:`publisher_for`)."""
        return publisher_for(env)

    def publish(self, application_name: str, notification_id: int) -> None:
        """Note that ``application_name`` has notifications up to ``notification_id``."""
        with self._condition:
            if notification_id > self._pending.get(application_name, 0):
                self._pending[application_name] = notification_id
            self._condition.notify()
            # A forked child inherits the attribute but not the thread: start its own.
            if self._sender is None or self._sender_pid != os.getpid():
                self._start_sender()

    def _start_sender(self) -> None:
        self._sender_pid = os.getpid()
        self._sender = threading.Thread(
            target=self._send_pending, name="prompt publisher", daemon=True
        )
        self._sender.start()

    def _send_pending(self) -> None:
        while True:
            with self._condition:
                while not self._pending and not self._closed:
                    self._condition.wait()
                if not self._pending:
                    return
                pending, self._pending = self._pending, {}
            for application_name, notification_id in pending.items():
                self._send(application_name, notification_id)

    def _send(self, application_name: str, notification_id: int) -> None:
        if self._failing and time.monotonic() < self._retry_at:
            return
        try:
            self.transport.publish(application_name, notification_id)
        except Exception as error:
            self._retry_at = time.monotonic() + self.RETRY_AFTER
            if not self._failing:
                self._failing = True
                logger.warning(
                    "Can't publish prompts of %r through %s (%s); followers catch up by "
                    "polling until it is back",
                    application_name,
                    self.description,
                    error,
                )
            return
        if self._failing:
            self._failing = False
            logger.warning(
                "Prompts of %r are published through %s again",
                application_name,
                self.description,
            )

    def close(self) -> None:
        """Send what is pending (waiting up to a second), then close the transport."""
        with self._condition:
            self._closed = True
            self._condition.notify()
        sender = self._sender
        if sender is not None and sender is not threading.current_thread():
            sender.join(timeout=1.0)
        with suppress(Exception):
            self.transport.close()
