"""Prompts between the processes of one :class:`~runners.multiprocess.MultiProcessRunner`.

Features: one ``multiprocessing`` queue per follower process, made by the runner and handed
to the children when they are spawned; publishing puts the leader's name on the queue of
each of its followers. Not addressable by URL (``PROMPT_TRANSPORT`` names the others).

Guarantees: none beyond the runner's lifetime; a prompt for a child that is down waits in
its queue until the child is back (harmless: the log is the delivery).
"""

from __future__ import annotations

import queue
from collections.abc import Mapping, Sequence
from typing import Any

from runners.transports.base import PromptTransport

__all__ = ["QueueTransport"]


class QueueTransport(PromptTransport):
    """Reads prompts from its ``inbox``; publishes to the inboxes of a leader's followers."""

    def __init__(
        self,
        inbox: Any | None,
        routes: Mapping[str, Sequence[Any]],
        leaders: Sequence[str] = (),
    ) -> None:
        """Listen on ``inbox`` for ``leaders``; ``routes`` maps leaders to followers' inboxes."""
        super().__init__(leaders)
        self.inbox = inbox
        self.routes = routes

    def publish(self, leader_name: str, notification_id: int) -> None:
        """Put the leader's name on each follower's queue."""
        for inbox in self.routes.get(leader_name, ()):
            inbox.put_nowait(leader_name)

    def wait(self, timeout: float) -> list[str]:
        """Take what is queued, waiting up to ``timeout`` for the first prompt."""
        if self.inbox is None:
            return []
        try:
            prompted = {self.inbox.get(timeout=max(timeout, 0.001))}
        except queue.Empty:
            return []
        while True:
            try:
                prompted.add(self.inbox.get_nowait())
            except queue.Empty:
                return sorted(prompted & self.leaders)
