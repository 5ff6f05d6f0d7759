"""The prompt transport interface: publish "leader X has new notifications", and wait for it.

A prompt is only a wake-up. The leader's notification log is the delivery: a prompt may be
lost, duplicated or late, and a worker that never hears one still catches up by polling.
Transports therefore promise nothing about durability or ordering; they try to be fast.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import TracebackType
    from typing import Self

__all__ = ["PromptTransport"]


class PromptTransport(ABC):
    """Carries prompts between processes; listens to the leaders named at construction.

    Implementations translate their driver's errors into
    :class:`~runners.errors.TransportConnectionError`.
    """

    #: The leaders whose prompts :meth:`wait` returns.
    leaders: frozenset[str]

    def __init__(self, leaders: Iterable[str] = ()) -> None:
        """Listen for prompts of ``leaders`` (none: publish only)."""
        self.leaders = frozenset(leaders)

    @abstractmethod
    def publish(self, leader_name: str, notification_id: int) -> None:
        """Tell listeners that ``leader_name`` has notifications up to ``notification_id``."""

    @abstractmethod
    def wait(self, timeout: float) -> list[str]:
        """Return the names of leaders that prompted since the last call, waiting at most
        ``timeout`` seconds for one (an empty list when none did)."""

    def close(self) -> None:  # noqa: B027 - optional: a transport may hold nothing to close
        """Release connections; the transport can't be used afterwards."""

    def __enter__(self) -> Self:
        """Use the transport in a ``with`` block, which closes it."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        """Close the transport."""
        self.close()
