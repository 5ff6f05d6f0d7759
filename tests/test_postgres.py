"""The recorder and factory contracts on a real PostgreSQL, plus PostgreSQL's own settings.

Every contract TestCase of ``eventsourcing.tests.persistence`` runs here against a fresh
database per test (the ``postgres_database`` fixture), as it does for POPO and SQLite.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest

from eventsourcing.persistence import (
    ConnectionUnavailableError,
    InfrastructureFactory,
    IntegrityError,
    OperationalError,
    ProgrammingError,
    StoredEvent,
    Tracking,
)
from eventsourcing.postgres import (
    PostgresAggregateRecorder,
    PostgresApplicationRecorder,
    PostgresDatastore,
    PostgresFactory,
    PostgresProcessRecorder,
    PostgresSubscription,
    PostgresTrackingRecorder,
    _PendingSave,
)
from eventsourcing.tests import persistence as contract
from eventsourcing.utils import Environment, get_topic
from runners.testing.postgres import PostgresDatabase


class PostgresTestCase:
    """Gives each test its own database, and datastores on it that close after the test."""

    db: PostgresDatabase
    originator_id_type = "uuid"

    @pytest.fixture(autouse=True)
    def _database(self, postgres_database: PostgresDatabase) -> None:
        self.db = postgres_database

    def create_datastore(self, **kwargs: Any) -> PostgresDatastore:
        """Return a datastore on the test's database, closed after the test."""
        env = self.db.env
        kwargs.setdefault("originator_id_type", self.originator_id_type)
        kwargs.setdefault("pool_size", 4)
        kwargs.setdefault("max_overflow", 12)
        datastore = PostgresDatastore(
            dbname=env["POSTGRES_DBNAME"],
            host=env["POSTGRES_HOST"],
            port=env["POSTGRES_PORT"],
            user=env["POSTGRES_USER"],
            password=env["POSTGRES_PASSWORD"],
            **kwargs,
        )
        self.addCleanup(datastore.close)  # type: ignore[attr-defined]
        return datastore


class TextIDs:
    """Recorders of ``text`` originator ids, given string ids."""

    originator_id_type = "text"

    def new_originator_id(self) -> UUID | str:
        return f"account-{uuid4()}"


class TestAggregateRecorder(PostgresTestCase, contract.AggregateRecorderTestCase):
    def create_recorder(self) -> PostgresAggregateRecorder:
        recorder = PostgresAggregateRecorder(self.create_datastore())
        recorder.create_table()
        return recorder


class TestAggregateRecorderTextIDs(TextIDs, TestAggregateRecorder):
    pass


class TestApplicationRecorder(PostgresTestCase, contract.ApplicationRecorderTestCase):
    def create_recorder(self) -> PostgresApplicationRecorder:
        recorder = PostgresApplicationRecorder(self.create_datastore())
        recorder.create_table()
        return recorder

    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()


class TestApplicationRecorderTextIDs(TextIDs, TestApplicationRecorder):
    pass


class TestApplicationRecorderWithoutCoalescing(TestApplicationRecorder):
    """The same contract with one transaction per save, as 9.x does it."""

    def create_recorder(self) -> PostgresApplicationRecorder:
        recorder = super().create_recorder()
        recorder._coalescer.max_saves = 1
        return recorder


class TestTrackingRecorder(PostgresTestCase, contract.TrackingRecorderTestCase):
    def create_recorder(self) -> PostgresTrackingRecorder:
        recorder = PostgresTrackingRecorder(self.create_datastore())
        recorder.create_table()
        return recorder


class TestProcessRecorder(PostgresTestCase, contract.ProcessRecorderTestCase):
    def create_recorder(self) -> PostgresProcessRecorder:
        recorder = PostgresProcessRecorder(self.create_datastore())
        recorder.create_table()
        return recorder


class TestProcessRecorderTextIDs(TextIDs, TestProcessRecorder):
    pass


class TestNonInterleavingNotificationIDs(
    PostgresTestCase, contract.NonInterleavingNotificationIDsBaseCase
):
    def create_recorder(self) -> PostgresApplicationRecorder:
        recorder = PostgresApplicationRecorder(self.create_datastore())
        recorder.create_table()
        return recorder


class TestPostgresFactory(
    PostgresTestCase, contract.InfrastructureFactoryTestCase[PostgresFactory]
):
    def setUp(self) -> None:
        self.env = Environment("TestCase", {"PERSISTENCE_MODULE": "eventsourcing.postgres"})
        self.env.update(self.db.env)
        super().setUp()

    def expected_factory_class(self) -> type[PostgresFactory]:
        return PostgresFactory

    def expected_aggregate_recorder_class(self) -> type[PostgresAggregateRecorder]:
        return PostgresAggregateRecorder

    def expected_application_recorder_class(self) -> type[PostgresApplicationRecorder]:
        return PostgresApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[PostgresTrackingRecorder]:
        return PostgresTrackingRecorder

    def tracking_recorder_subclass(self) -> type[PostgresTrackingRecorder]:
        class MyPostgresTrackingRecorder(PostgresTrackingRecorder):
            pass

        return MyPostgresTrackingRecorder

    def expected_process_recorder_class(self) -> type[PostgresProcessRecorder]:
        return PostgresProcessRecorder


# ---------------------------------------------------------------------------------------------
# The factory's environment variables


def factory(env: dict[str, str], name: str = "") -> PostgresFactory:
    return PostgresFactory(Environment(name, env))


REQUIRED = [
    (
        "POSTGRES_DBNAME",
        "Postgres database name not found in environment with key 'POSTGRES_DBNAME'",
    ),
    ("POSTGRES_HOST", "Postgres host not found in environment with key 'POSTGRES_HOST'"),
    ("POSTGRES_USER", "Postgres user not found in environment with key 'POSTGRES_USER'"),
    (
        "POSTGRES_PASSWORD",
        "Postgres password not found in environment with key 'POSTGRES_PASSWORD'",
    ),
]
SETTINGS = {
    "POSTGRES_DBNAME": "db",
    "POSTGRES_HOST": "127.0.0.1",
    "POSTGRES_USER": "u",
    "POSTGRES_PASSWORD": "secret",
}


@pytest.mark.parametrize(("key", "message"), REQUIRED)
def test_required_settings(key: str, message: str) -> None:
    env = {k: v for k, v in SETTINGS.items() if k != key}
    with pytest.raises(OSError) as cm:
        factory(env)
    assert str(cm.value) == message


def test_password_topic_replaces_password() -> None:
    env = {k: v for k, v in SETTINGS.items() if k != "POSTGRES_PASSWORD"}
    env["POSTGRES_GET_PASSWORD_TOPIC"] = get_topic(_password)
    f = factory(env)
    assert f.datastore.pool.get_password_func is _password
    f.close()


def _password() -> str:
    return "from-a-function"


INTEGER_KEYS = [
    "POSTGRES_CONNECT_TIMEOUT",
    "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT",
    "POSTGRES_POOL_SIZE",
    "POSTGRES_MAX_OVERFLOW",
    "POSTGRES_MAX_WAITING",
    "POSTGRES_LOCK_TIMEOUT",
]


@pytest.mark.parametrize("key", INTEGER_KEYS)
def test_invalid_integer_settings(key: str) -> None:
    with pytest.raises(OSError) as cm:
        factory({**SETTINGS, key: "abc"})
    assert str(cm.value) == (
        f"Postgres environment value for key '{key}' is invalid. If set, an integer or "
        "empty string is expected: 'abc'"
    )


def test_invalid_conn_max_age() -> None:
    with pytest.raises(OSError) as cm:
        factory({**SETTINGS, "POSTGRES_CONN_MAX_AGE": "abc"})
    assert str(cm.value) == (
        "Postgres environment value for key 'POSTGRES_CONN_MAX_AGE' is invalid. If set, a "
        "float or empty string is expected: 'abc'"
    )


def test_invalid_originator_id_type() -> None:
    with pytest.raises(OSError) as cm:
        factory({**SETTINGS, "ORIGINATOR_ID_TYPE": "int"})
    assert str(cm.value) == "Invalid ORIGINATOR_ID_TYPE 'int', must be 'uuid' or 'text'"


def test_defaults() -> None:
    f = factory(SETTINGS)
    d = f.datastore
    assert (d.pool.min_size, d.pool.max_size) == (5, 15)
    assert d.pool.timeout == 30
    assert d.pool.max_waiting == 0
    assert d.pool.max_lifetime == 3600.0
    assert d.pre_ping is False
    assert d.lock_timeout == 0
    assert d.idle_in_transaction_session_timeout == 5
    assert d.schema == "public"
    assert d.single_row_tracking is True
    assert d.originator_id_type == "uuid"
    assert d.enable_db_functions is False
    assert d.port == "5432"
    f.close()


def test_settings_are_read() -> None:
    f = factory(
        {
            **SETTINGS,
            "POSTGRES_PORT": "5433",
            "POSTGRES_CONNECT_TIMEOUT": "7",
            "POSTGRES_POOL_SIZE": "2",
            "POSTGRES_MAX_OVERFLOW": "3",
            "POSTGRES_MAX_WAITING": "4",
            "POSTGRES_CONN_MAX_AGE": "12.5",
            "POSTGRES_PRE_PING": "y",
            "POSTGRES_LOCK_TIMEOUT": "9",
            "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "11",
            "POSTGRES_SCHEMA": "  ",
            "SINGLE_ROW_TRACKING": "no",
            "ORIGINATOR_ID_TYPE": "TEXT",
            "POSTGRES_ENABLE_DB_FUNCTIONS": "yes",
        }
    )
    d = f.datastore
    assert d.port == "5433"
    assert (d.pool.min_size, d.pool.max_size, d.pool.max_waiting) == (2, 5, 4)
    assert d.pool.timeout == 7
    assert d.pool.max_lifetime == 12.5
    assert d.pre_ping is True
    assert d.lock_timeout == 9
    assert d.idle_in_transaction_session_timeout == 11
    assert d.schema == "public"
    assert d.single_row_tracking is False
    assert d.originator_id_type == "text"
    assert d.enable_db_functions is True
    f.close()


def test_prefixed_settings_win() -> None:
    f = factory({**SETTINGS, "MYAPP_POSTGRES_POOL_SIZE": "1", "POSTGRES_POOL_SIZE": "9"}, "MyApp")
    assert f.datastore.pool.min_size == 1
    f.close()


def test_factory_constructed_from_topic() -> None:
    for topic in ("eventsourcing.postgres", "eventsourcing.postgres:PostgresFactory"):
        env = Environment(env={**SETTINGS, "PERSISTENCE_MODULE": topic})
        f = InfrastructureFactory.construct(env)
        assert type(f) is PostgresFactory
        f.close()


# ---------------------------------------------------------------------------------------------
# Tables, names and schemas


def table_names(db: PostgresDatabase, schema: str = "public") -> set[str]:
    with db.connect() as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchall()
    return {row[0] for row in rows}


def test_tables_are_named_after_the_application(postgres_database: PostgresDatabase) -> None:
    f = factory(postgres_database.env, "DogSchool")
    f.application_recorder()
    f.aggregate_recorder("snapshots")
    f.tracking_recorder()
    f.close()
    g = factory(postgres_database.env)
    g.application_recorder()
    g.aggregate_recorder("snapshots")
    g.tracking_recorder()
    g.close()
    assert table_names(postgres_database) == {
        "dogschool_events",
        "dogschool_snapshots",
        "dogschool_tracking",
        "dogschool_dead_letters",
        "dogschool_follower_settings",
        "stored_events",
        "stored_snapshots",
        "notification_tracking",
        "notification_dead_letters",
        "notification_follower_settings",
    }


def test_create_table_false_creates_nothing(postgres_database: PostgresDatabase) -> None:
    f = factory({**postgres_database.env, "CREATE_TABLE": "no"}, "App")
    recorder = f.application_recorder()
    assert table_names(postgres_database) == set()
    with pytest.raises(ProgrammingError) as cm:
        recorder.insert_events([StoredEvent(uuid4(), 1, "t", b"")])
    assert "create_table()" in str(cm.value)
    with pytest.raises(ProgrammingError):
        recorder.select_notifications(None, 10)
    f.close()


def test_schema_is_created_and_used(postgres_database: PostgresDatabase) -> None:
    f = factory({**postgres_database.env, "POSTGRES_SCHEMA": "my schema"}, "App")
    recorder = f.application_recorder()
    assert recorder.insert_events([StoredEvent(uuid4(), 1, "t", b"x")]) == [1]
    f.close()
    assert table_names(postgres_database, "my schema") == {"app_events"}
    assert table_names(postgres_database) == set()


NASTY_NAMES = [
    'Robert"); DROP TABLE students;--',
    "it's; SELECT 1",
    "100%s off %(x)s %%",  # psycopg placeholders
    "Ünïcødé 🐈",
    "UPPER and lower",
]


@pytest.mark.parametrize("name", NASTY_NAMES)
def test_names_reach_sql_as_quoted_identifiers(
    postgres_database: PostgresDatabase, name: str
) -> None:
    f = factory({**postgres_database.env, "POSTGRES_SCHEMA": name}, name)
    recorder = f.process_recorder()
    snapshots = f.aggregate_recorder("snapshots")
    ids = recorder.insert_events([StoredEvent(uuid4(), 1, "t", b"x")], tracking=Tracking("up", 1))
    assert ids == [1]
    many = [StoredEvent(uuid4(), 1, "t", b"x") for _ in range(100)]  # sent with COPY
    assert recorder.insert_events(many) == list(range(2, 102))
    snapshots.insert_events([StoredEvent(uuid4(), 1, "t", b"x")])
    with recorder.subscribe(gt=0) as subscription:
        assert next(subscription).id == 1
    assert recorder.max_notification_id() == 101
    f.close()
    prefix = name.lower()
    assert table_names(postgres_database, name) == {
        f"{prefix}_events",
        f"{prefix}_snapshots",
        f"{prefix}_tracking",
        f"{prefix}_dead_letters",
        f"{prefix}_follower_settings",
    }


@pytest.mark.parametrize(
    ("name", "env_key"),
    [
        ("x" * 57, ""),  # x..x_events is 64 bytes
        ("é" * 29, ""),  # 58 bytes of UTF-8 + "_events": too long in bytes, not in characters
        ("s" * 64, "POSTGRES_SCHEMA"),
        ("nul\x00byte", ""),
    ],
)
def test_names_postgres_cannot_hold_are_refused(
    postgres_database: PostgresDatabase, name: str, env_key: str
) -> None:
    env = {**postgres_database.env}
    app_name = "App"
    if env_key:
        env[env_key] = name
    else:
        app_name = name
    with pytest.raises(ProgrammingError) as cm:
        factory(env, app_name).application_recorder()
    message = str(cm.value)
    assert "Identifier too long" in message or "NUL" in message
    assert table_names(postgres_database) == set()


def test_long_names_that_fit_are_accepted(postgres_database: PostgresDatabase) -> None:
    f = factory(postgres_database.env, "x" * 56)  # x..x_events is 63 bytes
    f.application_recorder().insert_events([StoredEvent(uuid4(), 1, "t", b"x")])
    f.close()
    assert table_names(postgres_database) == {"x" * 56 + "_events"}


# ---------------------------------------------------------------------------------------------
# Recorders: behaviour beyond the contract


def test_str_ids_in_uuid_tables_are_returned_as_uuids(postgres_database: PostgresDatabase) -> None:
    f = factory(postgres_database.env, "App")
    recorder = f.application_recorder()
    originator_id = uuid4()
    recorder.insert_events([StoredEvent(str(originator_id), 1, "t", b"x")])
    (event,) = recorder.select_events(str(originator_id))
    assert event.originator_id == originator_id
    (notification,) = recorder.select_notifications(None, 1)
    assert notification.originator_id == originator_id
    f.close()


@pytest.mark.parametrize("size", [3, 200], ids=["insert", "copy"])
def test_conflicts_in_big_and_small_batches_write_nothing(
    postgres_database: PostgresDatabase, size: int
) -> None:
    f = factory(postgres_database.env, "App")
    recorder = f.application_recorder()
    taken = StoredEvent(uuid4(), 1, "t", b"taken")
    (first,) = recorder.insert_events([taken]) or []
    batch = [StoredEvent(uuid4(), 1, "t", b"x") for _ in range(size - 1)] + [taken]
    with pytest.raises(IntegrityError):
        recorder.insert_events(batch)
    assert [n.id for n in recorder.select_notifications(None, 1000)] == [first]
    ids = recorder.insert_events(batch[:-1])
    after_first = recorder.select_notifications(first, 1000, inclusive_of_start=False)
    assert [n.id for n in after_first] == ids
    assert [n.state for n in recorder.select_notifications(None, 1000)] == [b"taken"] + [
        b"x"
    ] * (size - 1)
    f.close()


def test_tracking_recorder_rejects_events(postgres_database: PostgresDatabase) -> None:
    f = factory(postgres_database.env, "App")
    with pytest.raises(ProgrammingError):
        f.application_recorder().insert_events([], tracking=Tracking("up", 1))
    f.close()


def test_multi_row_tracking(postgres_database: PostgresDatabase) -> None:
    f = factory({**postgres_database.env, "SINGLE_ROW_TRACKING": "no"}, "App")
    recorder = f.tracking_recorder()
    recorder.insert_tracking(Tracking("up", 2))
    recorder.insert_tracking(Tracking("up", 1))  # multi-row tracking allows filling gaps
    with pytest.raises(IntegrityError):
        recorder.insert_tracking(Tracking("up", 2))
    assert recorder.max_tracking_id("up") == 2
    f.close()


def test_multi_row_table_is_migrated_to_single_row(postgres_database: PostgresDatabase) -> None:
    multi = factory({**postgres_database.env, "SINGLE_ROW_TRACKING": "no"}, "App")
    recorder = multi.tracking_recorder()
    for app, position in [("a", 1), ("a", 5), ("b", 3)]:
        recorder.insert_tracking(Tracking(app, position))
    multi.close()

    single = factory(postgres_database.env, "App")
    migrated = single.tracking_recorder()
    assert migrated.max_tracking_id("a") == 5
    assert migrated.max_tracking_id("b") == 3
    assert migrated.max_tracking_id("__migration__") == 1
    with pytest.raises(IntegrityError):
        migrated.insert_tracking(Tracking("a", 4))
    migrated.insert_tracking(Tracking("a", 6))
    single.close()
    assert "bkup1_app_tracking" in table_names(postgres_database)

    with pytest.raises(OperationalError) as cm:
        factory({**postgres_database.env, "SINGLE_ROW_TRACKING": "no"}, "App").tracking_recorder()
    assert "Can't do multi-row tracking with single-row tracking table" in str(cm.value)


def test_db_functions_are_created(postgres_database: PostgresDatabase) -> None:
    f = factory({**postgres_database.env, "POSTGRES_ENABLE_DB_FUNCTIONS": "y"}, "App")
    recorder = f.application_recorder()
    assert recorder.insert_events([StoredEvent(uuid4(), 1, "t", b"x")]) == [1]
    f.close()
    with postgres_database.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_proc WHERE proname = 'es_insert_events_uuid'"
        ).fetchone()
    assert row == (1,)


def test_subscription_is_woken_by_another_process_style_writer(
    postgres_database: PostgresDatabase,
) -> None:
    """A NOTIFY from a plain connection (as another process would send) wakes it."""
    f = factory(postgres_database.env, "App")
    recorder = f.application_recorder()
    assert isinstance(recorder, PostgresApplicationRecorder)
    with recorder.subscribe(gt=None) as subscription:
        assert isinstance(subscription, PostgresSubscription)
        other = factory(postgres_database.env, "App").application_recorder()
        other.insert_events([StoredEvent(uuid4(), 1, "t", b"x")])
        assert next(subscription).id == 1
    f.close()


def test_closed_datastore_says_so(postgres_database: PostgresDatabase) -> None:
    f = factory(postgres_database.env, "App")
    recorder = f.application_recorder()
    f.close()
    with pytest.raises(OperationalError) as cm:
        recorder.max_notification_id()
    assert "closed" in str(cm.value)


def test_pool_exhaustion_raises_connection_unavailable(
    postgres_database: PostgresDatabase,
) -> None:
    env = {
        **postgres_database.env,
        "POSTGRES_POOL_SIZE": "1",
        "POSTGRES_MAX_OVERFLOW": "1",
        "POSTGRES_CONNECT_TIMEOUT": "1",
    }
    f = factory(env, "App")
    recorder = f.application_recorder()
    with f.datastore.get_connection(), f.datastore.get_connection():
        with pytest.raises(ConnectionUnavailableError) as cm:
            recorder.max_notification_id()
        assert "all 2 connections are in use" in str(cm.value)
        assert isinstance(cm.value, OperationalError) and isinstance(cm.value, TimeoutError)
    assert recorder.max_notification_id() is None
    f.close()


def test_psycopg_errors_are_translated(postgres_database: PostgresDatabase) -> None:
    f = factory(postgres_database.env, "App")
    recorder = f.aggregate_recorder()
    assert isinstance(recorder, PostgresAggregateRecorder)
    recorder.sql_create_statements = [psycopg.sql.Composed([psycopg.sql.SQL("CREATE BROKEN")])]
    with pytest.raises(ProgrammingError) as cm:
        recorder.create_table()
    assert not isinstance(cm.value, psycopg.Error)
    f.close()


def test_a_failure_midway_through_a_batch_decides_no_save_as_recorded(
    postgres_database: PostgresDatabase,
) -> None:
    """Saves committed together: if the transaction fails, none is reported recorded."""

    class BreaksOnOneSave(PostgresApplicationRecorder):
        breaking: object = None

        def _save_with_savepoint(self, conn: Any, save: Any) -> None:
            if save is self.breaking:
                conn.execute("SELECT * FROM no_such_table", ())
            super()._save_with_savepoint(conn, save)

    f = factory(postgres_database.env, "App")
    recorder = BreaksOnOneSave(f.datastore, events_table_name="app_events")
    recorder.create_table()
    taken = StoredEvent(uuid4(), 1, "t", b"taken")
    recorder.insert_events([taken])
    saves = [
        _PendingSave([StoredEvent(uuid4(), 1, "t", b"a")], None),
        _PendingSave([taken], None),  # a conflict: the batch is redone a savepoint per save
        _PendingSave([StoredEvent(uuid4(), 1, "t", b"b")], None),
    ]
    recorder.breaking = saves[2]
    recorder._commit(saves)
    for save in saves:
        with pytest.raises(ProgrammingError):
            save.result()
    assert [n.state for n in recorder.select_notifications(None, 10)] == [b"taken"]
    f.close()
