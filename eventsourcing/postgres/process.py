"""The process recorder: new events and a tracking position in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import Connection, Cursor
from psycopg.rows import DictRow

from eventsourcing.persistence import IntegrityError, ProcessRecorder, StoredEvent, Tracking
from eventsourcing.postgres.aggregate import _LIBRARY_INSERT_EVENTS
from eventsourcing.postgres.application import PostgresApplicationRecorder
from eventsourcing.postgres.datastore import PostgresDatastore
from eventsourcing.postgres.saves import _PendingSave
from eventsourcing.postgres.scripts import _Statement
from eventsourcing.postgres.tracking import PostgresTrackingRecorder


class PostgresProcessRecorder(
    PostgresTrackingRecorder, PostgresApplicationRecorder, ProcessRecorder
):
    """Records new events and a tracking position in one transaction (tracking first)."""

    def __init__(
        self,
        datastore: PostgresDatastore,
        *,
        events_table_name: str = "stored_events",
        tracking_table_name: str = "notification_tracking",
    ) -> None:
        """Use the two tables (both in the datastore's schema)."""
        super().__init__(
            datastore,
            tracking_table_name=tracking_table_name,
            events_table_name=events_table_name,
        )

    def _upsert_tracking(self, tracking: Tracking) -> _Statement:
        return self._tracking_statement(tracking, checked=False)

    def _checked_tracking(self, tracking: Tracking) -> _Statement:
        return self._tracking_statement(tracking, checked=True)

    def _insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        """Record the ``tracking=`` record, before the events, in the same transaction."""
        tracking: Tracking | None = kwargs.get("tracking")
        if tracking is not None:
            self._insert_tracking(curs, tracking)

    def _commit_batch(self, conn: Connection[DictRow], saves: list[_PendingSave]) -> None:
        if any(save.tracking for save in saves):
            self._check_multi_row_table(conn)
        super()._commit_batch(conn, saves)

    def _tracking_refused_error(self, save: _PendingSave | None) -> IntegrityError:
        return PostgresTrackingRecorder._tracking_refused_error(self, save)

    def _tracking_is_stored(self, conn: Connection[DictRow], save: _PendingSave) -> bool:
        return PostgresTrackingRecorder._tracking_is_stored(self, conn, save)


_LIBRARY_INSERT_EVENTS.add(PostgresProcessRecorder._insert_events)
