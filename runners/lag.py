"""How far behind a follower is in a leader's log: the one measure that ``status`` and the
test plugin's ``wait_until_caught_up`` share.

A follower with ``topics`` passes over the other notifications without recording anything
for them, so its tracked position stays below the leader's last notification id while the
log ends with events it ignores (the Paxos replicas' logs always do). Its lag is the number
of notifications after its position that it would process.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from eventsourcing.application import Application
from eventsourcing.system import Follower

__all__ = ["SCAN_LIMIT", "Lag", "follower_lag"]

# A follower with topics: count at most this many of its notifications (more: an estimate).
SCAN_LIMIT = 10_000


class Lag(NamedTuple):
    """A follower's position in a leader's log, the log's last id, and what is left to do."""

    lag: int
    tracked: int
    leader_last: int


def follower_lag(
    follower: Follower[Any],
    leader_name: str,
    leader: Application[Any],
    tracked: int | None = None,
    limit: int = SCAN_LIMIT,
) -> Lag:
    """How many notifications of ``leader`` (named ``leader_name``) ``follower`` has yet to
    process after ``tracked`` (by default, its recorded position); beyond ``limit`` of them,
    the count of all notifications left."""
    if tracked is None:
        tracked = follower.recorder.max_tracking_id(leader_name) or 0
    last = leader.recorder.max_notification_id() or 0
    behind = max(0, last - tracked)
    if not behind or not follower.topics:
        return Lag(behind, tracked, last)
    pending = leader.recorder.select_notifications(
        start=tracked, limit=limit, topics=follower.topics, inclusive_of_start=False
    )
    return Lag(len(pending) if len(pending) < limit else behind, tracked, last)
