"""The infrastructure factory: reads the ``POSTGRES_*`` settings, builds recorders."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar, cast

from typing_extensions import TypeVar as TypeVarWithDefault

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    BaseInfrastructureFactory,
    InfrastructureFactory,
    ProcessRecorder,
    TTrackingRecorder,
)
from eventsourcing.postgres.aggregate import PostgresAggregateRecorder
from eventsourcing.postgres.application import PostgresApplicationRecorder
from eventsourcing.postgres.datastore import PostgresDatastore, _check_originator_id_type
from eventsourcing.postgres.process import PostgresProcessRecorder
from eventsourcing.postgres.recorder import PostgresRecorder
from eventsourcing.postgres.tracking import PostgresTrackingRecorder
from eventsourcing.utils import Environment, EnvType, resolve_topic, strtobool

if TYPE_CHECKING:
    from types import TracebackType
    from typing import Self

_T = TypeVar("_T")


TPostgresTrackingRecorder = TypeVarWithDefault(
    "TPostgresTrackingRecorder",
    bound=PostgresTrackingRecorder,
    default=PostgresTrackingRecorder,
)


class BasePostgresFactory(BaseInfrastructureFactory[TTrackingRecorder]):
    """Reads the ``POSTGRES_*`` settings and builds one datastore for all recorders."""

    POSTGRES_DBNAME = "POSTGRES_DBNAME"
    POSTGRES_HOST = "POSTGRES_HOST"
    POSTGRES_PORT = "POSTGRES_PORT"
    POSTGRES_USER = "POSTGRES_USER"
    POSTGRES_PASSWORD = "POSTGRES_PASSWORD"
    POSTGRES_GET_PASSWORD_TOPIC = "POSTGRES_GET_PASSWORD_TOPIC"
    POSTGRES_CONNECT_TIMEOUT = "POSTGRES_CONNECT_TIMEOUT"
    POSTGRES_CONN_MAX_AGE = "POSTGRES_CONN_MAX_AGE"
    POSTGRES_PRE_PING = "POSTGRES_PRE_PING"
    POSTGRES_MAX_WAITING = "POSTGRES_MAX_WAITING"
    POSTGRES_LOCK_TIMEOUT = "POSTGRES_LOCK_TIMEOUT"
    POSTGRES_POOL_SIZE = "POSTGRES_POOL_SIZE"
    POSTGRES_MAX_OVERFLOW = "POSTGRES_MAX_OVERFLOW"
    POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT = "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT"
    POSTGRES_SCHEMA = "POSTGRES_SCHEMA"
    POSTGRES_SINGLE_ROW_TRACKING = "SINGLE_ROW_TRACKING"
    ORIGINATOR_ID_TYPE = "ORIGINATOR_ID_TYPE"
    POSTGRES_ENABLE_DB_FUNCTIONS = "POSTGRES_ENABLE_DB_FUNCTIONS"
    CREATE_TABLE = "CREATE_TABLE"

    def __init__(self, env: Environment | EnvType | None):
        """Read the settings (see the module docstring); OSError names a missing or bad one."""
        super().__init__(env)
        password, get_password_func = self._password()
        self.datastore = PostgresDatastore(
            dbname=self._required(self.POSTGRES_DBNAME, "database name"),
            host=self._required(self.POSTGRES_HOST, "host"),
            port=self.env.get(self.POSTGRES_PORT) or "5432",
            user=self._required(self.POSTGRES_USER, "user"),
            password=password,
            get_password_func=get_password_func,
            connect_timeout=self._int(self.POSTGRES_CONNECT_TIMEOUT, 30),
            idle_in_transaction_session_timeout=self._int(
                self.POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT, 5
            ),
            pool_size=self._int(self.POSTGRES_POOL_SIZE, 5),
            max_overflow=self._int(self.POSTGRES_MAX_OVERFLOW, 10),
            max_waiting=self._int(self.POSTGRES_MAX_WAITING, 0),
            conn_max_age=self._float(self.POSTGRES_CONN_MAX_AGE, 60 * 60.0),
            pre_ping=strtobool(self.env.get(self.POSTGRES_PRE_PING) or "no"),
            lock_timeout=self._int(self.POSTGRES_LOCK_TIMEOUT, 0),
            schema=self.env.get(self.POSTGRES_SCHEMA) or "",
            single_row_tracking=strtobool(self.env.get(self.POSTGRES_SINGLE_ROW_TRACKING, "t")),
            originator_id_type=_check_originator_id_type(
                self.env.get(self.ORIGINATOR_ID_TYPE, "uuid"), OSError
            ),
            enable_db_functions=strtobool(self.env.get(self.POSTGRES_ENABLE_DB_FUNCTIONS) or "no"),
        )

    def _required(self, key: str, what: str) -> str:
        value = self.env.get(key)
        if value is None:
            raise OSError(f"Postgres {what} not found in environment with key '{key}'")
        return value

    def _password(self) -> tuple[str, Callable[[], str] | None]:
        topic = self.env.get(self.POSTGRES_GET_PASSWORD_TOPIC)
        if topic:
            func: Callable[[], str] = resolve_topic(topic)
            return "", func
        return self._required(self.POSTGRES_PASSWORD, "password"), None

    def _int(self, key: str, default: int) -> int:
        return self._number(key, default, int, "an integer")

    def _float(self, key: str, default: float) -> float:
        return self._number(key, default, float, "a float")

    def _number(self, key: str, default: _T, kind: Callable[[str], _T], described: str) -> _T:
        text = self.env.get(key)
        if not text or not text.strip():
            return default
        try:
            return kind(text)
        except ValueError:
            raise OSError(
                f"Postgres environment value for key '{key}' is invalid. If set, {described} "
                f"or empty string is expected: '{text}'"
            ) from None

    def env_create_table(self) -> bool:
        """True unless ``CREATE_TABLE`` is false (read now, not at construction)."""
        return strtobool(self.env.get(self.CREATE_TABLE) or "yes")

    def __enter__(self) -> Self:
        """Open the pool now."""
        self.datastore.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        """Close the datastore."""
        self.close()

    def close(self) -> None:
        """Close the datastore's connections."""
        if hasattr(self, "datastore"):
            self.datastore.close()


_TRecorder = TypeVar("_TRecorder", bound=PostgresRecorder)


class PostgresFactory(
    BasePostgresFactory[PostgresTrackingRecorder],
    InfrastructureFactory[PostgresTrackingRecorder],
):
    """Builds PostgreSQL recorders whose tables are named after the application."""

    aggregate_recorder_class: type[PostgresAggregateRecorder] = PostgresAggregateRecorder
    application_recorder_class: type[PostgresApplicationRecorder] = PostgresApplicationRecorder
    tracking_recorder_class: type[PostgresTrackingRecorder] = PostgresTrackingRecorder
    process_recorder_class: type[PostgresProcessRecorder] = PostgresProcessRecorder

    def _prefix(self, default: str) -> str:
        return self.env.name.lower() or default

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        """Return a recorder of ``<app>_<purpose>`` (e.g. snapshots)."""
        recorder = type(self).aggregate_recorder_class(
            datastore=self.datastore, events_table_name=f"{self._prefix('stored')}_{purpose}"
        )
        return self._created(recorder)

    def application_recorder(self) -> ApplicationRecorder:
        """Return a recorder of ``<app>_events`` (class from APPLICATION_RECORDER_TOPIC)."""
        cls = self._recorder_class(
            self.APPLICATION_RECORDER_TOPIC,
            PostgresApplicationRecorder,
            type(self).application_recorder_class,
        )
        recorder = cls(datastore=self.datastore, events_table_name=self._events_table())
        return self._created(recorder)

    def tracking_recorder(
        self, tracking_recorder_class: type[TPostgresTrackingRecorder] | None = None
    ) -> TPostgresTrackingRecorder:
        """Return a recorder of ``<app>_tracking`` (class from the argument or the topic)."""
        cls = self._recorder_class(
            self.TRACKING_RECORDER_TOPIC,
            cast("type[TPostgresTrackingRecorder]", PostgresTrackingRecorder),
            cast("type[TPostgresTrackingRecorder]", type(self).tracking_recorder_class),
            given=tracking_recorder_class,
        )
        recorder = cls(datastore=self.datastore, tracking_table_name=self._tracking_table())
        return self._created(recorder)

    def process_recorder(self) -> ProcessRecorder:
        """Return a recorder of ``<app>_events`` and ``<app>_tracking`` together."""
        cls = self._recorder_class(
            self.PROCESS_RECORDER_TOPIC,
            PostgresProcessRecorder,
            type(self).process_recorder_class,
        )
        recorder = cls(
            datastore=self.datastore,
            events_table_name=self._events_table(),
            tracking_table_name=self._tracking_table(),
        )
        return self._created(recorder)

    def _events_table(self) -> str:
        return f"{self._prefix('stored')}_events"

    def _tracking_table(self) -> str:
        return f"{self._prefix('notification')}_tracking"

    def _created(self, recorder: _TRecorder) -> _TRecorder:
        if self.env_create_table():
            recorder.create_table()
        return recorder


Factory = PostgresFactory
