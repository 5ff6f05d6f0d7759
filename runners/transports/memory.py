"""Prompts between threads of one process: ``memory://NAME``.

Features: every transport opened with the same NAME shares one hub; ``publish`` wakes each
listener of the leader at once. Guarantees: nothing beyond the process (use it for tests and
for workers laid out as threads). Not durable, no fan-out across processes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import ClassVar

from runners.transports.base import PromptTransport

__all__ = ["MemoryTransport"]


class _Hub:
    """The listeners of one NAME."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.listeners: list[MemoryTransport] = []


class MemoryTransport(PromptTransport):
    """A transport between threads of this process, keyed by a hub name."""

    _hubs: ClassVar[dict[str, _Hub]] = {}
    _hubs_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, name: str = "", leaders: Iterable[str] = ()) -> None:
        """Join the hub ``name``, listening for ``leaders``."""
        super().__init__(leaders)
        with self._hubs_lock:
            self._hub = self._hubs.setdefault(name, _Hub())
        self._prompted: set[str] = set()
        self._condition = threading.Condition()
        if self.leaders:
            with self._hub.lock:
                self._hub.listeners.append(self)

    def publish(self, leader_name: str, notification_id: int) -> None:
        """Wake every listener of ``leader_name`` in this process."""
        with self._hub.lock:
            listeners = list(self._hub.listeners)
        for listener in listeners:
            if leader_name in listener.leaders:
                listener._receive(leader_name)

    def _receive(self, leader_name: str) -> None:
        with self._condition:
            self._prompted.add(leader_name)
            self._condition.notify_all()

    def wait(self, timeout: float) -> list[str]:
        """Return the leaders that prompted, waiting up to ``timeout`` for one."""
        with self._condition:
            if not self._prompted:
                self._condition.wait(timeout)
            prompted, self._prompted = self._prompted, set()
        return sorted(prompted)

    def close(self) -> None:
        """Leave the hub."""
        with self._hub.lock:
            if self in self._hub.listeners:
                self._hub.listeners.remove(self)
