"""The infrastructure factory: SQLite recorders sharing one datastore."""

from __future__ import annotations

from typing import TypeVar

from eventsourcing.persistence import (
    InfrastructureFactory,
)
from eventsourcing.sqlite.datastore import OriginatorIDType, SQLiteDatastore
from eventsourcing.sqlite.recorders import (
    SQLiteAggregateRecorder,
    SQLiteApplicationRecorder,
    SQLiteRecorder,
)
from eventsourcing.sqlite.tracking import SQLiteProcessRecorder, SQLiteTrackingRecorder
from eventsourcing.utils import Environment, EnvType, strtobool

_R = TypeVar("_R", bound=SQLiteRecorder)


class SQLiteFactory(InfrastructureFactory[SQLiteTrackingRecorder]):
    """Makes SQLite recorders that share one :class:`SQLiteDatastore` (see module docs)."""

    SQLITE_DBNAME = "SQLITE_DBNAME"
    SQLITE_LOCK_TIMEOUT = "SQLITE_LOCK_TIMEOUT"
    SQLITE_SINGLE_ROW_TRACKING = "SINGLE_ROW_TRACKING"
    ORIGINATOR_ID_TYPE = "ORIGINATOR_ID_TYPE"
    CREATE_TABLE = "CREATE_TABLE"

    aggregate_recorder_class: type[SQLiteAggregateRecorder] = SQLiteAggregateRecorder
    application_recorder_class: type[SQLiteApplicationRecorder] = SQLiteApplicationRecorder
    tracking_recorder_class: type[SQLiteTrackingRecorder] = SQLiteTrackingRecorder
    process_recorder_class: type[SQLiteProcessRecorder] = SQLiteProcessRecorder

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        self.datastore = SQLiteDatastore(
            db_name=self._db_name(),
            lock_timeout=self._lock_timeout(),
            single_row_tracking=self._truth(self.SQLITE_SINGLE_ROW_TRACKING, "t"),
            originator_id_type=self._originator_id_type(),
        )

    def aggregate_recorder(self, purpose: str = "events") -> SQLiteAggregateRecorder:
        """Return an aggregate recorder using the table ``stored_<purpose>``."""
        recorder = self.aggregate_recorder_class(
            datastore=self.datastore, events_table_name="stored_" + purpose
        )
        return self._maybe_create_table(recorder)

    def application_recorder(self) -> SQLiteApplicationRecorder:
        """Return an application recorder (``APPLICATION_RECORDER_TOPIC`` may choose it)."""
        cls = self._recorder_class(
            self.APPLICATION_RECORDER_TOPIC,
            SQLiteApplicationRecorder,
            self.application_recorder_class,
        )
        return self._maybe_create_table(cls(datastore=self.datastore))

    def tracking_recorder(
        self, tracking_recorder_class: type[SQLiteTrackingRecorder] | None = None
    ) -> SQLiteTrackingRecorder:
        """Return a tracking recorder: of the given class, else ``TRACKING_RECORDER_TOPIC``."""
        cls = self._recorder_class(
            self.TRACKING_RECORDER_TOPIC,
            SQLiteTrackingRecorder,
            self.tracking_recorder_class,
            given=tracking_recorder_class,
        )
        return self._maybe_create_table(cls(datastore=self.datastore))

    def process_recorder(self) -> SQLiteProcessRecorder:
        """Return a process recorder (``PROCESS_RECORDER_TOPIC`` may choose it)."""
        cls = self._recorder_class(
            self.PROCESS_RECORDER_TOPIC, SQLiteProcessRecorder, self.process_recorder_class
        )
        return self._maybe_create_table(cls(datastore=self.datastore))

    def env_create_table(self) -> bool:
        """Say whether recorders should create their tables (``CREATE_TABLE``)."""
        return self._truth(self.CREATE_TABLE, "yes")

    def close(self) -> None:
        """Close the datastore."""
        self.datastore.close()

    # -- internals ---------------------------------------------------------------------

    def _maybe_create_table(self, recorder: _R) -> _R:
        if self.env_create_table():
            recorder.create_table()
        return recorder

    def _db_name(self) -> str:
        db_name = self.env.get(self.SQLITE_DBNAME)
        if not db_name:
            keys = ", ".join(self.env.create_keys(self.SQLITE_DBNAME))
            msg = f"SQLite database name not found in environment with keys: {keys}"
            raise OSError(msg)
        return db_name

    def _lock_timeout(self) -> int | None:
        value = (self.env.get(self.SQLITE_LOCK_TIMEOUT) or "").strip()
        if not value:
            return None
        try:
            return int(value)
        except ValueError:
            msg = (
                f"SQLite environment value for key '{self.SQLITE_LOCK_TIMEOUT}' is invalid. "
                f"If set, an int or empty string is expected: '{value}'"
            )
            raise OSError(msg) from None

    def _originator_id_type(self) -> OriginatorIDType:
        value = self.env.get(self.ORIGINATOR_ID_TYPE, "uuid") or "uuid"
        if value.lower() == "uuid":
            return "uuid"
        if value.lower() == "text":
            return "text"
        msg = f"Invalid {self.ORIGINATOR_ID_TYPE} '{value}', must be 'uuid' or 'text'"
        raise OSError(msg)

    def _truth(self, key: str, default: str) -> bool:
        value = self.env.get(key, default) or default
        try:
            return strtobool(value)
        except ValueError:
            msg = (
                f"SQLite environment value for key {key!r} is invalid: {value!r}; "
                "expected a truth value such as 'yes'/'no', 't'/'f' or '1'/'0'"
            )
            raise ValueError(msg) from None


Factory = SQLiteFactory
