"""Follow a DCB application: its tagged decisions, each with a tracking record.

:class:`DCBApplicationSubscription` is to a :class:`~eventsourcing.dcb.application.
DCBApplication` what :class:`~eventsourcing.projection.ApplicationSubscription` is to an
application: it yields ``(tagged_decision, Tracking(app.name, position))`` after a given
position, and then waits for new decisions. A projection that records each tracking record
with its view processes every decision exactly once, resuming after the position its
tracking recorder has reached. It needs the application's mapper (``MAPPER_TOPIC``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from eventsourcing.dcb.api import DCBQuery, DCBQueryItem
from eventsourcing.persistence import ProgrammingError, Tracking

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Self

    from eventsourcing.dcb.application import DCBApplication
    from eventsourcing.dcb.domain import Decision, Tagged

__all__ = ["DCBApplicationSubscription"]


class DCBApplicationSubscription(Iterator[tuple["Tagged[Decision]", Tracking]]):
    """Iterates over an application's tagged decisions after position ``gt``, then waits.

    ``topics`` (decision class topics) selects decisions of those classes only. Use it as
    a context manager; :meth:`stop` ends the iteration from any thread.
    """

    def __init__(
        self,
        app: DCBApplication,
        gt: int | None = None,
        topics: Sequence[str] = (),
    ):
        """Subscribe to ``app``'s recorder after position ``gt``."""
        if not hasattr(app, "mapper"):
            msg = (
                f"{app.name} has no mapper, so its decisions can't be followed: set "
                "MAPPER_TOPIC in its environment (for example to "
                "eventsourcing.dcb.msgpack:MessagePackMapper)"
            )
            raise ProgrammingError(msg)
        self.name = app.name
        self.recorder = app.recorder
        self.mapper = app.mapper
        query = DCBQuery(items=[DCBQueryItem(types=list(topics))]) if topics else None
        self.subscription = self.recorder.subscribe(query=query, after=gt)

    def stop(self) -> None:
        """End the iteration."""
        self.subscription.stop()

    def __enter__(self) -> Self:
        """Enter the recorder's subscription."""
        self.subscription.__enter__()
        return self

    def __exit__(self, *args: object, **kwargs: Any) -> None:
        """Stop and leave the recorder's subscription."""
        self.subscription.__exit__(*args, **kwargs)

    def __iter__(self) -> Self:
        """Return the subscription itself."""
        return self

    def __next__(self) -> tuple[Tagged[Decision], Tracking]:
        """Return the next tagged decision and its position, blocking until there is one."""
        sequenced = next(self.subscription)
        tagged: Tagged[Decision] = self.mapper.to_domain_event(sequenced.event)
        return tagged, Tracking(self.name, sequenced.position)

    def __del__(self) -> None:
        """Stop the recorder's subscription when garbage collected."""
        with contextlib.suppress(AttributeError):
            self.stop()
