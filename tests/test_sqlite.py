"""Tests for eventsourcing.sqlite: the shared recorder contracts, then SQLite specifics."""

from __future__ import annotations

import gc
import os
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from itertools import count
from typing import Any, Literal
from unittest import TestCase
from unittest.mock import Mock
from uuid import UUID, uuid4

from eventsourcing.persistence import (
    ConnectionPoolClosedError,
    ConnectionUnavailableError,
    DatabaseError,
    DataError,
    InfrastructureFactory,
    InfrastructureFactoryError,
    IntegrityError,
    InterfaceError,
    InternalError,
    Notification,
    NotSupportedError,
    OperationalError,
    PersistenceError,
    ProgrammingError,
    StoredEvent,
    Tracking,
)
from eventsourcing.sqlite import (
    SQLITE3_DEFAULT_LOCK_TIMEOUT,
    Factory,
    SQLiteAggregateRecorder,
    SQLiteApplicationRecorder,
    SQLiteConnectionPool,
    SQLiteDatastore,
    SQLiteFactory,
    SQLiteProcessRecorder,
    SQLiteSubscription,
    SQLiteTrackingRecorder,
    SQLiteTransaction,
)
from eventsourcing.tests.persistence import (
    AggregateRecorderTestCase,
    ApplicationRecorderTestCase,
    InfrastructureFactoryTestCase,
    ProcessRecorderTestCase,
    TrackingRecorderTestCase,
)
from eventsourcing.utils import Environment, get_topic

_names = count(1)


class TmpDirMixin(TestCase):
    """Gives each test a temporary directory, and fresh database names in it."""

    _tmpdir: tempfile.TemporaryDirectory[str] | None = None

    def new_file_db(self) -> str:
        if self._tmpdir is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="es_sqlite_test_")
            self.addCleanup(self._tmpdir.cleanup)
        return os.path.join(self._tmpdir.name, f"db{next(_names)}.sqlite3")

    @staticmethod
    def new_memory_db() -> str:
        return f"file:es_test_{next(_names)}_{uuid4().hex}?mode=memory&cache=shared"


def stored_events(originator_id: UUID | str, versions: range, topic: str = "t") -> list[Any]:
    return [StoredEvent(originator_id, v, topic, f"state{v}".encode()) for v in versions]


# ---------------------------------------------------------------------------------------
# The shared contracts, on file databases and on shared in-memory databases.
# ---------------------------------------------------------------------------------------


class WithTextOriginatorIDs:
    originator_id_type: Literal["uuid", "text"] = "text"

    def new_originator_id(self) -> UUID | str:
        return f"text-id-{uuid4()}"


class FileDB(TmpDirMixin):
    originator_id_type: Literal["uuid", "text"] = "uuid"

    def new_db_name(self) -> str:
        return self.new_file_db()

    def new_datastore(self, **kwargs: Any) -> SQLiteDatastore:
        datastore = SQLiteDatastore(
            self.new_db_name(), originator_id_type=self.originator_id_type, **kwargs
        )
        self.addCleanup(datastore.close)
        return datastore


class MemoryDB(FileDB):
    def new_db_name(self) -> str:
        return self.new_memory_db()


class TestAggregateRecorderOnFile(FileDB, AggregateRecorderTestCase):
    def create_recorder(self) -> SQLiteAggregateRecorder:
        recorder = SQLiteAggregateRecorder(self.new_datastore())
        recorder.create_table()
        return recorder


class TestAggregateRecorderInMemory(MemoryDB, TestAggregateRecorderOnFile):
    pass


class TestAggregateRecorderWithTextIDs(WithTextOriginatorIDs, TestAggregateRecorderOnFile):
    pass


class TestApplicationRecorderOnFile(FileDB, ApplicationRecorderTestCase[SQLiteApplicationRecorder]):
    def create_recorder(self) -> SQLiteApplicationRecorder:
        recorder = SQLiteApplicationRecorder(self.new_datastore(pool_size=20))
        recorder.create_table()
        return recorder

    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()


class TestApplicationRecorderInMemory(MemoryDB, TestApplicationRecorderOnFile):
    pass


class TestApplicationRecorderWithTextIDs(WithTextOriginatorIDs, TestApplicationRecorderOnFile):
    pass


class TestTrackingRecorderOnFile(FileDB, TrackingRecorderTestCase):
    def create_recorder(self) -> SQLiteTrackingRecorder:
        recorder = SQLiteTrackingRecorder(self.new_datastore())
        recorder.create_table()
        return recorder


class TestTrackingRecorderInMemory(MemoryDB, TestTrackingRecorderOnFile):
    pass


class TestProcessRecorderOnFile(FileDB, ProcessRecorderTestCase):
    def create_recorder(self) -> SQLiteProcessRecorder:
        recorder = SQLiteProcessRecorder(self.new_datastore())
        recorder.create_table()
        return recorder


class TestProcessRecorderInMemory(MemoryDB, TestProcessRecorderOnFile):
    pass


class TestProcessRecorderWithTextIDs(WithTextOriginatorIDs, TestProcessRecorderOnFile):
    pass


class TestFactoryContractOnFile(TmpDirMixin, InfrastructureFactoryTestCase[SQLiteFactory]):
    def expected_factory_class(self) -> type[SQLiteFactory]:
        return SQLiteFactory

    def expected_aggregate_recorder_class(self) -> type[SQLiteAggregateRecorder]:
        return SQLiteAggregateRecorder

    def expected_application_recorder_class(self) -> type[SQLiteApplicationRecorder]:
        return SQLiteApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[SQLiteTrackingRecorder]:
        return SQLiteTrackingRecorder

    class TrackingRecorderSubclass(SQLiteTrackingRecorder):
        pass

    def tracking_recorder_subclass(self) -> type[SQLiteTrackingRecorder]:
        return self.TrackingRecorderSubclass

    def expected_process_recorder_class(self) -> type[SQLiteProcessRecorder]:
        return SQLiteProcessRecorder

    def db_name(self) -> str:
        return self.new_file_db()

    def setUp(self) -> None:
        self.env = Environment("TestCase")
        self.env[InfrastructureFactory.PERSISTENCE_MODULE] = SQLiteFactory.__module__
        self.env[SQLiteFactory.SQLITE_DBNAME] = self.db_name()
        super().setUp()


class TestFactoryContractInMemory(TestFactoryContractOnFile):
    def db_name(self) -> str:
        return ":memory:"


# ---------------------------------------------------------------------------------------
# The factory and its environment variables.
# ---------------------------------------------------------------------------------------


class TestFactory(TmpDirMixin):
    def setUp(self) -> None:
        super().setUp()
        self.env = Environment("TestCase")
        self.env[InfrastructureFactory.PERSISTENCE_MODULE] = "eventsourcing.sqlite"
        self.env[SQLiteFactory.SQLITE_DBNAME] = self.new_file_db()

    def factory(self) -> SQLiteFactory:
        factory = SQLiteFactory(self.env)
        self.addCleanup(factory.close)
        return factory

    def test_factory_alias_and_topic(self) -> None:
        self.assertIs(Factory, SQLiteFactory)
        self.assertEqual(get_topic(Factory), "eventsourcing.sqlite:SQLiteFactory")
        factory = InfrastructureFactory.construct(self.env)
        self.addCleanup(factory.close)
        self.assertIsInstance(factory, SQLiteFactory)
        self.assertEqual(SQLITE3_DEFAULT_LOCK_TIMEOUT, 5)

    def test_missing_db_name_message(self) -> None:
        del self.env[SQLiteFactory.SQLITE_DBNAME]
        with self.assertRaises(OSError) as cm:
            InfrastructureFactory.construct(self.env)
        self.assertEqual(
            cm.exception.args[0],
            "SQLite database name not found in environment with keys: "
            "TESTCASE_SQLITE_DBNAME, SQLITE_DBNAME",
        )

    def test_prefixed_db_name_wins(self) -> None:
        other = self.new_file_db()
        self.env["TESTCASE_SQLITE_DBNAME"] = other
        self.assertEqual(self.factory().datastore.pool.db_name, other)

    def test_lock_timeout_parsing(self) -> None:
        cases: list[tuple[str | None, int | None]] = [
            (None, None),
            ("", None),
            ("  ", None),
            ("10", 10),
            (" 7 ", 7),
        ]
        for value, expected in cases:
            if value is None:
                self.env.pop(SQLiteFactory.SQLITE_LOCK_TIMEOUT, None)
            else:
                self.env[SQLiteFactory.SQLITE_LOCK_TIMEOUT] = value
            self.assertEqual(self.factory().datastore.pool.lock_timeout, expected, value)

    def test_lock_timeout_invalid_message(self) -> None:
        self.env[SQLiteFactory.SQLITE_LOCK_TIMEOUT] = "abc"
        with self.assertRaises(OSError) as cm:
            SQLiteFactory(self.env)
        self.assertEqual(
            cm.exception.args[0],
            "SQLite environment value for key 'SQLITE_LOCK_TIMEOUT' is invalid. "
            "If set, an int or empty string is expected: 'abc'",
        )

    def test_lock_timeout_is_used_by_connections(self) -> None:
        self.env[SQLiteFactory.SQLITE_LOCK_TIMEOUT] = "1"
        first = self.factory().application_recorder()
        second = self.factory().application_recorder()
        # Hold the file's write lock from the first datastore...
        with first.datastore.transaction(commit=True) as cursor:
            cursor.execute("INSERT INTO stored_events VALUES ('a', 1, 't', x'')")
            started = time.monotonic()
            # ...so the second waits about one second, then gives up.
            with self.assertRaises(OperationalError) as cm:
                second.insert_events(stored_events(uuid4(), range(1, 2)))
            waited = time.monotonic() - started
        self.assertIn("database is locked", str(cm.exception))
        self.assertGreater(waited, 0.8)
        self.assertLess(waited, 4)

    def test_single_row_tracking(self) -> None:
        self.assertTrue(self.factory().datastore.single_row_tracking)
        self.env[SQLiteFactory.SQLITE_SINGLE_ROW_TRACKING] = "f"
        self.assertFalse(self.factory().datastore.single_row_tracking)
        self.env[SQLiteFactory.SQLITE_SINGLE_ROW_TRACKING] = "maybe"
        with self.assertRaises(ValueError) as cm:
            SQLiteFactory(self.env)
        self.assertIn("'SINGLE_ROW_TRACKING'", str(cm.exception))
        self.assertIn("'maybe'", str(cm.exception))

    def test_originator_id_type(self) -> None:
        self.assertEqual(self.factory().datastore.originator_id_type, "uuid")
        self.env[SQLiteFactory.ORIGINATOR_ID_TYPE] = "text"
        self.assertEqual(self.factory().datastore.originator_id_type, "text")
        self.env[SQLiteFactory.ORIGINATOR_ID_TYPE] = "int"
        with self.assertRaises(OSError) as cm:
            SQLiteFactory(self.env)
        self.assertEqual(
            cm.exception.args[0], "Invalid ORIGINATOR_ID_TYPE 'int', must be 'uuid' or 'text'"
        )

    def test_create_table_no(self) -> None:
        self.env[SQLiteFactory.CREATE_TABLE] = "no"
        factory = self.factory()
        recorders: list[Any] = [
            factory.aggregate_recorder(),
            factory.application_recorder(),
            factory.process_recorder(),
        ]
        for recorder in recorders:
            with self.assertRaises(OperationalError):
                recorder.select_events(uuid4())
        with self.assertRaises(OperationalError):
            factory.tracking_recorder().max_tracking_id("upstream")
        # Reading the setting when called (not when constructed) lets it change later.
        self.env[SQLiteFactory.CREATE_TABLE] = "yes"
        self.assertEqual(factory.application_recorder().select_events(uuid4()), [])

    def test_table_names_are_fixed(self) -> None:
        factory = self.factory()
        self.assertEqual(factory.aggregate_recorder().events_table_name, "stored_events")
        snapshots = factory.aggregate_recorder("snapshots")
        self.assertEqual(snapshots.events_table_name, "stored_snapshots")
        self.env.name = "OtherName"
        self.assertEqual(factory.application_recorder().events_table_name, "stored_events")

    def test_recorders_share_one_datastore(self) -> None:
        factory = self.factory()
        self.assertIs(factory.application_recorder().datastore, factory.datastore)
        self.assertIs(factory.process_recorder().datastore, factory.datastore)
        self.assertIs(factory.tracking_recorder().datastore, factory.datastore)

    def test_recorder_topics(self) -> None:
        class MyApplicationRecorder(SQLiteApplicationRecorder):
            pass

        class MyProcessRecorder(SQLiteProcessRecorder):
            pass

        self.env["APPLICATION_RECORDER_TOPIC"] = get_topic(MyApplicationRecorder)
        self.env["PROCESS_RECORDER_TOPIC"] = get_topic(MyProcessRecorder)
        factory = self.factory()
        self.assertIs(type(factory.application_recorder()), MyApplicationRecorder)
        self.assertIs(type(factory.process_recorder()), MyProcessRecorder)

    def test_recorder_topic_of_wrong_class(self) -> None:
        self.env["APPLICATION_RECORDER_TOPIC"] = get_topic(SQLiteTrackingRecorder)
        with self.assertRaises(InfrastructureFactoryError) as cm:
            self.factory().application_recorder()
        self.assertIn("APPLICATION_RECORDER_TOPIC", str(cm.exception))
        self.assertIn("SQLiteApplicationRecorder", str(cm.exception))

    def test_close_closes_datastore(self) -> None:
        factory = self.factory()
        recorder = factory.application_recorder()
        factory.close()
        self.assertTrue(factory.datastore.pool.closed)
        with self.assertRaises(ConnectionPoolClosedError):
            recorder.max_notification_id()
        with self.assertRaises(ConnectionPoolClosedError):
            recorder.insert_events(stored_events(uuid4(), range(1, 2)))


# ---------------------------------------------------------------------------------------
# Connections, the pool, transactions and the datastore.
# ---------------------------------------------------------------------------------------


class TestTransaction(TestCase):
    def setUp(self) -> None:
        self.connection = Mock(sqlite3.Connection)
        self.transaction = SQLiteTransaction(self.connection, commit=True)

    def test_commits_when_no_error(self) -> None:
        with self.transaction:
            pass
        self.connection.commit.assert_called_once()
        self.connection.rollback.assert_not_called()

    def test_rolls_back_when_not_committing(self) -> None:
        with SQLiteTransaction(self.connection, commit=False):
            pass
        self.connection.commit.assert_not_called()
        self.connection.rollback.assert_called_once()

    def test_rolls_back_and_reraises_other_errors_unchanged(self) -> None:
        with self.assertRaises(TypeError), self.transaction:
            raise TypeError
        self.connection.commit.assert_not_called()
        self.connection.rollback.assert_called_once()

    def test_converts_sqlite_errors(self) -> None:
        pairs: list[tuple[type[Exception], type[Exception]]] = [
            (sqlite3.InterfaceError, InterfaceError),
            (sqlite3.DataError, DataError),
            (sqlite3.OperationalError, OperationalError),
            (sqlite3.IntegrityError, IntegrityError),
            (sqlite3.InternalError, InternalError),
            (sqlite3.ProgrammingError, ProgrammingError),
            (sqlite3.NotSupportedError, NotSupportedError),
            (sqlite3.DatabaseError, DatabaseError),
            (sqlite3.Error, PersistenceError),
        ]
        for sqlite_error, library_error in pairs:
            with self.assertRaises(library_error) as cm, self.transaction:
                raise sqlite_error("boom")
            self.assertIs(type(cm.exception), library_error)
            self.assertIsInstance(cm.exception.__cause__, sqlite_error)

    def test_converts_commit_errors(self) -> None:
        self.connection.commit.side_effect = sqlite3.OperationalError("disk I/O error")
        with self.assertRaises(OperationalError), self.transaction:
            pass


class TestDatastore(TmpDirMixin):
    def test_connect_failure_raises_interface_error(self) -> None:
        datastore = SQLiteDatastore(None)  # type: ignore[arg-type]
        with self.assertRaises(InterfaceError), datastore.transaction(commit=False):
            pass
        with self.assertRaises(InterfaceError), datastore.transaction(commit=True):
            pass

    def test_transaction_yields_rows(self) -> None:
        datastore = SQLiteDatastore(":memory:")
        with datastore.transaction(commit=False) as cursor:
            cursor.execute("SELECT 1 AS one")
            rows = cursor.fetchall()
        self.assertEqual(rows[0][0], 1)
        self.assertEqual(rows[0]["one"], 1)

    def test_wal_flags(self) -> None:
        memory = SQLiteDatastore(":memory:")
        with memory.transaction(commit=False):
            pass
        self.assertFalse(memory.pool.is_journal_mode_wal)
        self.assertFalse(memory.pool.journal_mode_was_changed_to_wal)
        memory.close()

        db_name = self.new_file_db()
        datastore = SQLiteDatastore(db_name)
        with datastore.transaction(commit=False):
            pass
        self.assertTrue(datastore.pool.is_journal_mode_wal)
        self.assertTrue(datastore.pool.journal_mode_was_changed_to_wal)
        datastore.close()

        datastore = SQLiteDatastore(db_name)
        with datastore.transaction(commit=True):
            pass
        self.assertTrue(datastore.pool.is_journal_mode_wal)
        self.assertFalse(datastore.pool.journal_mode_was_changed_to_wal)
        datastore.close()

        with sqlite3.connect(db_name) as conn:
            self.assertEqual(conn.execute("PRAGMA journal_mode").fetchone()[0], "wal")

    def test_file_connections_are_synchronous_full(self) -> None:
        datastore = SQLiteDatastore(self.new_file_db())
        self.addCleanup(datastore.close)
        for commit in (True, False):
            with datastore.transaction(commit=commit) as cursor:
                cursor.execute("PRAGMA synchronous")
                self.assertEqual(cursor.fetchone()[0], 2, "FULL is 2")

    def test_memory_mode_detection(self) -> None:
        for name in (":memory:", "file::memory:?cache=shared", "file:x?mode=memory"):
            self.assertTrue(SQLiteConnectionPool.detect_memory_mode(name), name)
        self.assertFalse(SQLiteConnectionPool.detect_memory_mode("/tmp/x.db"))
        pool = SQLiteConnectionPool(db_name=":memory:")
        self.assertTrue(pool.is_sqlite_memory_mode)

    def test_connections_are_configured(self) -> None:
        pool = SQLiteConnectionPool(db_name=self.new_file_db(), lock_timeout=3)
        conn = pool.get_connection()
        try:
            self.assertIsNone(conn.sqlite_conn.isolation_level)
            self.assertIs(conn.sqlite_conn.row_factory, sqlite3.Row)
        finally:
            pool.put_connection(conn)
            pool.close()

    def test_pool_limits_and_reuse(self) -> None:
        pool = SQLiteConnectionPool(db_name=self.new_file_db(), pool_size=2, max_overflow=2)
        self.addCleanup(pool.close)
        connections = [pool.get_connection() for _ in range(4)]
        with self.assertRaises(ConnectionUnavailableError):
            pool.get_connection(timeout=0)
        for conn in connections:
            pool.put_connection(conn)
        self.assertEqual(pool.num_in_pool, 2)
        self.assertEqual([c.closed for c in connections], [False, False, True, True])
        reused = pool.get_connection()
        self.assertIs(reused, connections[0])
        reused.cursor().execute("SELECT 1")
        pool.put_connection(reused)

    def test_memory_pool_excludes_readers_while_writing(self) -> None:
        pool = SQLiteConnectionPool(db_name=self.new_memory_db())
        self.addCleanup(pool.close)
        writer = pool.get_connection(is_writer=True)
        with self.assertRaises(ConnectionUnavailableError):
            pool.get_connection(timeout=0.05, is_writer=False)
        pool.put_connection(writer)
        reader = pool.get_connection(is_writer=False)
        with self.assertRaises(ConnectionUnavailableError):
            pool.get_connection(timeout=0.05, is_writer=True)
        pool.put_connection(reader)

    def test_pool_max_age_and_pre_ping(self) -> None:
        pool = SQLiteConnectionPool(db_name=self.new_file_db(), max_age=0.05, pre_ping=True)
        self.addCleanup(pool.close)
        first = pool.get_connection()
        pool.put_connection(first)
        time.sleep(0.2)
        self.assertTrue(first.closed)
        second = pool.get_connection()
        self.assertIsNot(second, first)
        self.assertFalse(second.closed)
        pool.put_connection(second)

    def test_closed_datastore_raises(self) -> None:
        recorder = SQLiteApplicationRecorder(SQLiteDatastore(self.new_file_db()))
        recorder.create_table()
        recorder.datastore.close()
        recorder.datastore.close()  # Idempotent.
        with self.assertRaises(Exception) as cm:
            recorder.insert_events(stored_events(uuid4(), range(1, 2)))
        self.assertIn("closed", str(cm.exception))

    def test_finaliser_does_not_wait_for_a_shared_lock(self) -> None:
        name = self.new_memory_db()
        kept = SQLiteDatastore(name)
        dropped = SQLiteApplicationRecorder(SQLiteDatastore(name))
        dropped.create_table()
        self.assertIs(kept.write_lock, dropped.datastore.write_lock)
        with kept.write_lock:
            del dropped
            gc.collect()  # Would deadlock if the finaliser took the write lock.
        kept.close()

    def test_shared_memory_datastores_can_be_used_together_from_threads(self) -> None:
        # Two datastores on one shared-cache database would otherwise hit
        # "database table is locked" when one reads while the other writes.
        name = self.new_memory_db()
        first = SQLiteApplicationRecorder(SQLiteDatastore(name))
        second = SQLiteApplicationRecorder(SQLiteDatastore(name))
        first.create_table()
        errors: list[Exception] = []

        def write() -> None:
            try:
                for _ in range(100):
                    first.insert_events(stored_events(uuid4(), range(1, 6)))
            except Exception as e:  # pragma: no cover
                errors.append(e)

        thread = threading.Thread(target=write)
        thread.start()
        while thread.is_alive():
            second.select_notifications(None, 100)
        thread.join()
        self.assertEqual(errors, [])
        self.assertEqual(second.max_notification_id(), 500)


# ---------------------------------------------------------------------------------------
# Recorder specifics.
# ---------------------------------------------------------------------------------------


class TestOriginatorIDTypes(TmpDirMixin):
    def recorder(self, id_type: Literal["uuid", "text"], db_name: str) -> Any:
        recorder = SQLiteApplicationRecorder(SQLiteDatastore(db_name, originator_id_type=id_type))
        self.addCleanup(recorder.datastore.close)
        recorder.create_table()
        return recorder

    def test_uuids_stored_as_hex_and_returned_by_type(self) -> None:
        db_name = self.new_file_db()
        originator_id = uuid4()
        as_uuid = self.recorder("uuid", db_name)
        as_uuid.insert_events(stored_events(originator_id, range(1, 3)))
        with sqlite3.connect(db_name) as conn:
            stored = conn.execute("SELECT DISTINCT originator_id FROM stored_events").fetchall()
        self.assertEqual(stored, [(originator_id.hex,)])

        events = as_uuid.select_events(originator_id)
        self.assertEqual([type(e.originator_id) for e in events], [UUID, UUID])
        self.assertEqual(
            as_uuid.select_events(str(originator_id.hex))[0].originator_id, originator_id
        )
        self.assertIs(type(as_uuid.select_notifications(None, 1)[0].originator_id), UUID)

        as_text = self.recorder("text", db_name)
        events = as_text.select_events(originator_id)
        self.assertEqual([e.originator_id for e in events], [originator_id.hex] * 2)
        notifications = as_text.select_notifications(None, 10)
        self.assertEqual([n.originator_id for n in notifications], [originator_id.hex] * 2)

    def test_text_ids(self) -> None:
        recorder = self.recorder("text", self.new_file_db())
        recorder.insert_events(stored_events("order-1", range(1, 3)))
        self.assertEqual(
            [e.originator_id for e in recorder.select_events("order-1")], ["order-1", "order-1"]
        )
        self.assertEqual(
            recorder.select_notifications(None, 10)[1],
            Notification("order-1", 2, "t", b"state2", 2),
        )


class TestMissingTables(TmpDirMixin):
    def datastore(self) -> SQLiteDatastore:
        return SQLiteDatastore(self.new_file_db())

    def test_aggregate_recorder(self) -> None:
        recorder = SQLiteAggregateRecorder(self.datastore())
        with self.assertRaises(OperationalError) as cm:
            recorder.insert_events([])
        self.assertIn("no such table: stored_events", str(cm.exception))
        self.assertIn("create_table()", str(cm.exception))
        with self.assertRaises(OperationalError):
            recorder.insert_events(stored_events(uuid4(), range(1, 3)))
        with self.assertRaises(OperationalError):
            recorder.select_events(uuid4())

    def test_application_recorder(self) -> None:
        recorder = SQLiteApplicationRecorder(SQLiteDatastore(":memory:"))
        with self.assertRaises(OperationalError):
            recorder.insert_events(stored_events(uuid4(), range(1, 2)))
        with self.assertRaises(OperationalError):
            recorder.select_events(uuid4())
        with self.assertRaises(OperationalError):
            recorder.select_notifications(start=1, limit=1)
        with self.assertRaises(OperationalError):
            recorder.max_notification_id()

    def test_process_and_tracking_recorders(self) -> None:
        process = SQLiteProcessRecorder(self.datastore())
        with self.assertRaises(OperationalError):
            process.insert_events(stored_events(uuid4(), range(1, 2)))
        with self.assertRaises(OperationalError):
            process.max_tracking_id("upstream")
        tracking = SQLiteTrackingRecorder(self.datastore())
        with self.assertRaises(OperationalError):
            tracking.insert_tracking(Tracking("upstream", 1))

    def test_broken_create_table_statements(self) -> None:
        recorder = SQLiteAggregateRecorder(self.datastore())
        recorder.create_table_statements = ["BLAH"]
        with self.assertRaises(OperationalError):
            recorder.create_table()


class TestAtomicWrites(TmpDirMixin):
    def recorder(self, cls: type[Any] = SQLiteApplicationRecorder, **kwargs: Any) -> Any:
        recorder = cls(SQLiteDatastore(self.new_file_db(), **kwargs))
        self.addCleanup(recorder.datastore.close)
        recorder.create_table()
        return recorder

    def assert_nothing_written(self, recorder: Any, expected_max: int | None) -> None:
        self.assertEqual(recorder.max_notification_id(), expected_max)

    def test_conflict_at_end_of_batch_writes_nothing(self) -> None:
        for size in (2, 33, 100, 1100):
            recorder = self.recorder()
            originator_id = uuid4()
            recorder.insert_events(stored_events(originator_id, range(size, size + 1)))
            with self.assertRaises(IntegrityError) as cm:
                recorder.insert_events(stored_events(originator_id, range(1, size + 1)))
            self.assertIn("UNIQUE constraint failed", str(cm.exception))
            self.assert_nothing_written(recorder, 1)
            self.assertEqual(len(recorder.select_events(originator_id)), 1)

    def test_duplicate_within_batch_writes_nothing(self) -> None:
        recorder = self.recorder()
        originator_id = uuid4()
        batch = stored_events(originator_id, range(1, 40)) + stored_events(
            originator_id, range(5, 6)
        )
        with self.assertRaises(IntegrityError):
            recorder.insert_events(batch)
        self.assert_nothing_written(recorder, None)

    def test_uuid_and_hex_forms_collide(self) -> None:
        recorder = self.recorder()
        originator_id = uuid4()
        recorder.insert_events(stored_events(originator_id, range(1, 2)))
        with self.assertRaises(IntegrityError):
            recorder.insert_events(stored_events(originator_id.hex, range(1, 2)))

    def test_aggregate_recorder_conflict(self) -> None:
        recorder = self.recorder(SQLiteAggregateRecorder)
        originator_id = uuid4()
        self.assertIsNone(recorder.insert_events(stored_events(originator_id, range(1, 2))))
        with self.assertRaises(IntegrityError):
            recorder.insert_events(stored_events(originator_id, range(1, 100)))
        self.assertEqual(len(recorder.select_events(originator_id)), 1)

    def test_tracking_conflict_writes_no_events(self) -> None:
        recorder = self.recorder(SQLiteProcessRecorder)
        recorder.insert_events(stored_events(uuid4(), range(1, 3)), tracking=Tracking("up", 5))
        for size in (1, 50):
            with self.assertRaises(IntegrityError) as cm:
                recorder.insert_events(
                    stored_events(uuid4(), range(1, size + 1)), tracking=Tracking("up", 5)
                )
            self.assertIn("Failed to record tracking for up 5", str(cm.exception))
        self.assert_nothing_written(recorder, 2)
        self.assertEqual(recorder.max_tracking_id("up"), 5)

    def test_event_conflict_writes_no_tracking(self) -> None:
        recorder = self.recorder(SQLiteProcessRecorder)
        originator_id = uuid4()
        recorder.insert_events(
            stored_events(originator_id, range(1, 2)), tracking=Tracking("up", 1)
        )
        with self.assertRaises(IntegrityError):
            recorder.insert_events(
                stored_events(originator_id, range(1, 2)), tracking=Tracking("up", 2)
            )
        self.assertEqual(recorder.max_tracking_id("up"), 1)

    def test_tracking_only(self) -> None:
        recorder = self.recorder(SQLiteProcessRecorder)
        self.assertEqual(recorder.insert_events([], tracking=Tracking("up", 3)), [])
        self.assertEqual(recorder.max_tracking_id("up"), 3)
        self.assertIsNone(recorder.max_notification_id())

    def test_notification_ids_of_large_batches(self) -> None:
        recorder = self.recorder()
        expected = 0
        for size in (1, 31, 32, 33, 64, 100, 511, 512, 513, 1000, 1500, 0):
            ids = recorder.insert_events(stored_events(uuid4(), range(1, size + 1)))
            self.assertEqual(ids, list(range(expected + 1, expected + size + 1)))
            expected += size
        notifications = recorder.select_notifications(None, expected + 10)
        self.assertEqual([n.id for n in notifications], list(range(1, expected + 1)))

    def test_batch_of_many_originators_round_trips(self) -> None:
        recorder = self.recorder()
        ids = [uuid4() for _ in range(7)]
        batch = [e for i in ids for e in stored_events(i, range(1, 11), topic=i.hex)]
        recorder.insert_events(batch)
        self.assertEqual(
            [
                (n.originator_id, n.originator_version, n.topic, n.state)
                for n in recorder.select_notifications(None, 100)
            ],
            [(e.originator_id, e.originator_version, e.topic, e.state) for e in batch],
        )


class TestSelectNotifications(TmpDirMixin):
    def test_bounds_and_topics(self) -> None:
        recorder = SQLiteApplicationRecorder(SQLiteDatastore(self.new_file_db()))
        self.addCleanup(recorder.datastore.close)
        recorder.create_table()
        for topic in ("topic1", "topic2", "topic3"):
            recorder.insert_events(stored_events(uuid4(), range(1, 2), topic=topic))

        def ids(*args: Any, **kwargs: Any) -> list[int]:
            return [n.id for n in recorder.select_notifications(*args, **kwargs)]

        self.assertEqual(ids(None, 10, stop=2), [1, 2])
        self.assertEqual(ids(None, 10, inclusive_of_start=False), [1, 2, 3])
        self.assertEqual(ids(1, 10, inclusive_of_start=False), [2, 3])
        self.assertEqual(ids(3, 1, inclusive_of_start=False), [])
        self.assertEqual(ids(1, 3, topics=["topic1", "topic3"]), [1, 3])
        self.assertEqual(ids(start=1, limit=10, stop=2, inclusive_of_start=False), [2])
        self.assertEqual(ids(0, 10), [1, 2, 3])
        self.assertEqual(ids(-5, 2), [1, 2])
        self.assertEqual(ids(2, 1, topics=("topic3",)), [3])


class TestTrackingMigration(TmpDirMixin):
    def recorder(
        self, db_name: str, *, single_row: bool = True, create_table: bool = True
    ) -> SQLiteTrackingRecorder:
        recorder = SQLiteTrackingRecorder(SQLiteDatastore(db_name, single_row_tracking=single_row))
        self.addCleanup(recorder.datastore.close)
        if create_table:
            recorder.create_table()
        return recorder

    def test_new_single_row_table(self) -> None:
        recorder = self.recorder(self.new_file_db())
        self.assertFalse(recorder.tracking_table_exists)
        self.assertIsNone(recorder.tracking_migration_previous)
        self.assertEqual(recorder.tracking_migration_current, 1)

    def test_migrates_multi_row_table(self) -> None:
        db_name = self.new_file_db()
        multi = self.recorder(db_name, single_row=False)
        for name, notification_id in [("up1", 1), ("up1", 3), ("up2", 1), ("up2", 4)]:
            multi.insert_tracking(Tracking(name, notification_id))
        # Multi-row tracking accepts filling a gap below the maximum.
        multi.insert_tracking(Tracking("up2", 2))

        single = self.recorder(db_name)
        self.assertTrue(single.tracking_table_exists)
        self.assertIsNone(single.tracking_migration_previous)
        self.assertEqual(single.tracking_migration_current, 1)
        self.assertEqual(single.max_tracking_id("up1"), 3)
        self.assertEqual(single.max_tracking_id("up2"), 4)
        self.assertTrue(single.has_tracking_id("up1", 2))
        with self.assertRaises(IntegrityError):
            single.insert_tracking(Tracking("up2", 3))
        single.insert_tracking(Tracking("up2", 5))

        with sqlite3.connect(db_name) as conn:
            rows = conn.execute("SELECT COUNT(*) FROM old1_tracking").fetchone()
            self.assertEqual(rows[0], 5)
            count_rows = conn.execute("SELECT COUNT(*) FROM tracking").fetchone()
            self.assertEqual(count_rows[0], 3, "marker, up1 and up2")

        again = self.recorder(db_name)
        self.assertTrue(again.tracking_table_exists)
        self.assertEqual(again.tracking_migration_previous, 1)
        self.assertEqual(again.tracking_migration_current, 1)
        self.assertEqual(again.max_tracking_id("up2"), 5)

    def test_multi_row_refused_on_single_row_table(self) -> None:
        db_name = self.new_file_db()
        self.recorder(db_name)
        with self.assertRaises(OperationalError) as cm:
            self.recorder(db_name, single_row=False)
        self.assertIn(
            "Can't do multi-row tracking with single-row tracking table", str(cm.exception)
        )
        recorder = self.recorder(db_name, single_row=False, create_table=False)
        for _ in range(2):
            with self.assertRaises(OperationalError):
                recorder.insert_tracking(Tracking("up", 10))

    def test_missing_table(self) -> None:
        db_name = self.new_file_db()
        for single_row in (True, False):
            recorder = self.recorder(db_name, single_row=single_row, create_table=False)
            with self.assertRaises(OperationalError):
                recorder.insert_tracking(Tracking("up", 1))
            self.assertFalse(recorder.tracking_table_exists)


class CountersView(SQLiteTrackingRecorder):
    """A view written as upstream examples write them: own table plus tracking, one commit."""

    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, count INTEGER)",
        ]

    def incr(self, name: str, tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as c:
            self._insert_tracking(c, tracking)
            c.execute(
                "INSERT INTO counters VALUES (?, 1) "
                "ON CONFLICT (name) DO UPDATE SET count = count + 1",
                (name,),
            )

    def get(self, name: str) -> int:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT count FROM counters WHERE name=?", (name,))
            row = c.fetchone()
            return int(row["count"]) if row else 0


class TestSubclassHelpers(TmpDirMixin):
    def test_view_with_own_table_and_tracking(self) -> None:
        view = CountersView(SQLiteDatastore(self.new_file_db()))
        self.addCleanup(view.datastore.close)
        view.create_table()
        view.incr("dogs", Tracking("school", 1))
        view.incr("dogs", Tracking("school", 2))
        with self.assertRaises(IntegrityError):
            view.incr("dogs", Tracking("school", 2))
        self.assertEqual(view.get("dogs"), 2, "the failed increment was rolled back")
        self.assertEqual(view.max_tracking_id("school"), 2)
        with view.datastore.transaction(commit=False) as c:
            self.assertEqual(view._max_tracking_id("school", c), 2)

    def test_insert_events_with_callers_transaction(self) -> None:
        recorder = SQLiteProcessRecorder(SQLiteDatastore(self.new_memory_db()))
        self.addCleanup(recorder.datastore.close)
        recorder.create_table()
        recorder.insert_events(stored_events(uuid4(), range(1, 3)))
        with recorder.datastore.transaction(commit=True) as c:
            ids = recorder._insert_events(
                c, stored_events(uuid4(), range(1, 41)), tracking=Tracking("up", 7)
            )
            self.assertEqual(recorder._max_notification_id(c), 42)
        self.assertEqual(ids, list(range(3, 43)))
        self.assertEqual(recorder.max_tracking_id("up"), 7)
        with self.assertRaises(IntegrityError), recorder.datastore.transaction(commit=True) as c:
            recorder._insert_events(c, stored_events(uuid4(), range(1, 2)))
            # A tracking conflict after other writes fails the whole transaction.
            recorder._insert_events(
                c, stored_events(uuid4(), range(1, 2)), tracking=Tracking("up", 7)
            )
        self.assertEqual(recorder.max_notification_id(), 42, "nothing from the failed transaction")

    def test_aggregate_recorder_helper_returns_none(self) -> None:
        recorder = SQLiteAggregateRecorder(SQLiteDatastore(self.new_memory_db()))
        self.addCleanup(recorder.datastore.close)
        recorder.create_table()
        originator_id = uuid4()
        with recorder.datastore.transaction(commit=True) as c:
            self.assertIsNone(recorder._insert_events(c, stored_events(originator_id, range(1, 4))))
        self.assertEqual(len(recorder.select_events(originator_id)), 3)


# ---------------------------------------------------------------------------------------
# Concurrency.
# ---------------------------------------------------------------------------------------


class ConcurrencyTests(TmpDirMixin):
    """Concurrency checks shared by file and in-memory databases (not collected itself)."""

    __test__ = False
    db_kind = "file"

    def recorder(self) -> SQLiteApplicationRecorder:
        name = self.new_file_db() if self.db_kind == "file" else self.new_memory_db()
        recorder = SQLiteApplicationRecorder(SQLiteDatastore(name, pool_size=10))
        self.addCleanup(recorder.datastore.close)
        recorder.create_table()
        return recorder

    def test_many_writers_and_readers(self) -> None:
        recorder = self.recorder()
        num_writers, batches_per_writer = 8, 25
        written: list[tuple[UUID, list[int]]] = []
        errors: list[BaseException] = []
        stop_reading = threading.Event()
        seen_maxima: list[list[int]] = []

        def write(worker: int) -> None:
            try:
                for batch in range(batches_per_writer):
                    originator_id = uuid4()
                    size = 1 + (worker * 7 + batch * 13) % 40
                    ids = recorder.insert_events(stored_events(originator_id, range(1, size + 1)))
                    assert ids is not None
                    written.append((originator_id, list(ids)))
            except BaseException as e:  # pragma: no cover
                errors.append(e)

        def read() -> None:
            maxima: list[int] = []
            seen_maxima.append(maxima)
            try:
                while not stop_reading.is_set():
                    page = recorder.select_notifications(None, 50, inclusive_of_start=False)
                    ids = [n.id for n in page]
                    assert ids == list(range(1, len(ids) + 1)), ids
                    maxima.append(recorder.max_notification_id() or 0)
            except BaseException as e:  # pragma: no cover
                errors.append(e)

        readers = [threading.Thread(target=read) for _ in range(3)]
        writers = [threading.Thread(target=write, args=(i,)) for i in range(num_writers)]
        for thread in readers + writers:
            thread.start()
        for thread in writers:
            thread.join()
        stop_reading.set()
        for thread in readers:
            thread.join()

        self.assertEqual(errors, [])
        all_ids = sorted(i for _, ids in written for i in ids)
        self.assertEqual(all_ids, list(range(1, len(all_ids) + 1)), "no lost or duplicate ids")
        for originator_id, ids in written:
            self.assertEqual(ids, list(range(ids[0], ids[0] + len(ids))), "contiguous batch")
            notifications = recorder.select_notifications(ids[0], len(ids))
            self.assertEqual({n.originator_id for n in notifications}, {originator_id})
        for maxima in seen_maxima:
            self.assertEqual(maxima, sorted(maxima), "readers never go backwards")

    def test_group_commit_fails_only_the_conflicting_write(self) -> None:
        recorder = self.recorder()
        datastore = recorder.datastore
        taken = uuid4()
        recorder.insert_events(stored_events(taken, range(1, 2)))
        batches = [stored_events(uuid4(), range(1, 4)) for _ in range(4)]
        batches.insert(2, stored_events(uuid4(), range(1, 3)) + stored_events(taken, range(1, 2)))
        results: dict[int, Any] = {}

        def insert(index: int) -> None:
            try:
                results[index] = recorder.insert_events(batches[index])
            except Exception as e:
                results[index] = e

        # Hold the write lock so that every write queues up, then let them go together.
        with datastore.write_lock:
            threads = [threading.Thread(target=insert, args=(i,)) for i in range(len(batches))]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 5
            while len(datastore._pending_writes) < len(batches):
                self.assertLess(time.monotonic(), deadline, "writes did not queue")
                time.sleep(0.001)
        for thread in threads:
            thread.join()

        self.assertIsInstance(results.pop(2), IntegrityError)
        ids = sorted(i for r in results.values() for i in r)
        self.assertEqual(ids, list(range(2, 14)), "four batches of three after event 1")
        for r in results.values():
            self.assertEqual(r, list(range(r[0], r[0] + 3)))
        self.assertEqual(recorder.max_notification_id(), 13)
        self.assertEqual(len(recorder.select_events(taken)), 1)
        self.assertEqual(recorder.select_events(batches[2][0].originator_id), [])

    def test_group_fails_together_when_sqlite_abandons_the_transaction(self) -> None:
        recorder = self.recorder()
        datastore = recorder.datastore

        def insert(cursor: sqlite3.Cursor) -> int:
            cursor.execute("INSERT INTO stored_events VALUES (?, 1, 't', x'')", (uuid4().hex,))
            return 1

        def fail_like_a_full_disk(cursor: sqlite3.Cursor) -> int:
            cursor.execute("ROLLBACK")  # What SQLite does itself on SQLITE_FULL.
            raise sqlite3.OperationalError("database or disk is full")

        results: dict[str, Any] = {}

        def write(name: str, func: Any) -> None:
            try:
                results[name] = datastore.write(func, transaction=False)
            except Exception as e:
                results[name] = e

        with datastore.write_lock:
            threads = [
                threading.Thread(target=write, args=(name, func))
                for name, func in [("ok", insert), ("full", fail_like_a_full_disk)]
            ]
            for queued, thread in enumerate(threads, start=1):
                thread.start()  # Queued in order: "ok" runs first in the group.
                while len(datastore._pending_writes) < queued:
                    time.sleep(0.001)
        for thread in threads:
            thread.join()
        self.assertIsInstance(results["ok"], OperationalError)
        self.assertIn("disk is full", str(results["ok"]))
        self.assertIsInstance(results["full"], OperationalError)
        self.assertIsNone(recorder.max_notification_id())
        # The writer is usable afterwards.
        self.assertEqual(recorder.insert_events(stored_events(uuid4(), range(1, 2))), [1])

    def test_non_interleaving_batches(self) -> None:
        recorder = self.recorder()
        first, second = uuid4(), uuid4()
        start = threading.Event()

        def insert(originator_id: UUID) -> None:
            start.wait()
            recorder.insert_events(stored_events(originator_id, range(1, 1001)))

        threads = [threading.Thread(target=insert, args=(i,)) for i in (first, second)]
        for thread in threads:
            thread.start()
        start.set()
        for thread in threads:
            thread.join()
        ids = {
            i: [n.id for n in recorder.select_notifications(None, 3000) if n.originator_id == i]
            for i in (first, second)
        }
        low, high = sorted(ids.values())
        self.assertEqual(low, list(range(1, 1001)))
        self.assertEqual(high, list(range(1001, 2001)))


class TestConcurrencyOnFile(ConcurrencyTests):
    __test__ = True

    def test_readers_are_not_blocked_by_an_open_write(self) -> None:
        recorder = self.recorder()
        recorder.insert_events(stored_events(uuid4(), range(1, 2)))
        holding = threading.Event()
        release = threading.Event()

        def hold_write_transaction() -> None:
            with recorder.datastore.transaction(commit=True) as cursor:
                cursor.execute("INSERT INTO stored_events VALUES (?, 1, 't', x'')", (uuid4().hex,))
                holding.set()
                release.wait(5)

        thread = threading.Thread(target=hold_write_transaction)
        thread.start()
        self.assertTrue(holding.wait(5))
        started = time.monotonic()
        # Readers carry on, and see only committed data.
        self.assertEqual(recorder.max_notification_id(), 1)
        self.assertEqual(len(recorder.select_notifications(None, 10)), 1)
        self.assertLess(time.monotonic() - started, 0.5)
        release.set()
        thread.join()
        self.assertEqual(recorder.max_notification_id(), 2)

    def test_writers_in_two_datastores_share_the_file(self) -> None:
        db_name = self.new_file_db()
        recorders = [SQLiteApplicationRecorder(SQLiteDatastore(db_name)) for _ in range(2)]
        for recorder in recorders:
            self.addCleanup(recorder.datastore.close)
            recorder.create_table()
        results: list[list[int]] = []

        def write(recorder: SQLiteApplicationRecorder) -> None:
            for _ in range(50):
                results.append(
                    list(recorder.insert_events(stored_events(uuid4(), range(1, 4))) or [])
                )

        threads = [threading.Thread(target=write, args=(r,)) for r in recorders]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(sorted(i for ids in results for i in ids), list(range(1, 301)))


class TestConcurrencyInMemory(ConcurrencyTests):
    __test__ = True
    db_kind = "memory"


# ---------------------------------------------------------------------------------------
# Subscriptions.
# ---------------------------------------------------------------------------------------


class TestSubscriptions(TmpDirMixin):
    def recorder(self, db_name: str) -> SQLiteApplicationRecorder:
        recorder = SQLiteApplicationRecorder(SQLiteDatastore(db_name))
        self.addCleanup(recorder.datastore.close)
        recorder.create_table()
        return recorder

    def next_with_timeout(self, subscription: Iterator[Any], timeout: float) -> Any:
        result: list[Any] = []
        thread = threading.Thread(target=lambda: result.append(next(subscription)), daemon=True)
        thread.start()
        thread.join(timeout)
        self.assertTrue(result, f"nothing received within {timeout}s")
        return result[0]

    def test_woken_in_process_after_commit(self) -> None:
        recorder = self.recorder(self.new_file_db())
        SQLiteSubscription.poll_interval = 60.0  # Only the in-process wake-up can work.
        self.addCleanup(setattr, SQLiteSubscription, "poll_interval", 0.05)
        with recorder.subscribe(gt=None) as subscription:
            time.sleep(0.05)
            started = time.monotonic()
            recorder.insert_events(stored_events(uuid4(), range(1, 2)))
            notification = self.next_with_timeout(subscription, 2)
            self.assertEqual(notification.id, 1)
            self.assertLess(time.monotonic() - started, 1.0)

    def test_sees_writes_from_another_process(self) -> None:
        db_name = self.new_file_db()
        recorder = self.recorder(db_name)
        recorder.insert_events(stored_events(uuid4(), range(1, 2)))
        script = textwrap.dedent(
            f"""
            from uuid import uuid4
            from eventsourcing.persistence import StoredEvent
            from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore
            recorder = SQLiteApplicationRecorder(SQLiteDatastore({db_name!r}))
            print(recorder.insert_events([StoredEvent(uuid4(), 1, "other", b"")]))
            """
        )
        with recorder.subscribe(gt=1, topics=["other"]) as subscription:
            output = subprocess.run(
                [sys.executable, "-c", script], capture_output=True, text=True, check=True
            ).stdout
            self.assertEqual(output.strip(), "[2]")
            notification = self.next_with_timeout(subscription, 5)
            self.assertEqual((notification.id, notification.topic), (2, "other"))

    def test_application_subscription(self) -> None:
        from eventsourcing.application import Application
        from eventsourcing.domain import Aggregate
        from eventsourcing.projection import ApplicationSubscription

        env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": self.new_file_db()}
        app: Application[UUID] = Application(env=env)
        self.addCleanup(app.close)
        first = Aggregate()
        app.save(first)
        with ApplicationSubscription(app, gt=None) as subscription:
            domain_event, tracking = self.next_with_timeout(subscription, 2)
            self.assertEqual((domain_event.originator_id, tracking.notification_id), (first.id, 1))
            second = Aggregate()
            app.save(second)
            domain_event, tracking = self.next_with_timeout(subscription, 2)
            self.assertEqual((domain_event.originator_id, tracking.notification_id), (second.id, 2))
            self.assertEqual(tracking.application_name, app.name)

    def test_stop_ends_iteration_and_threads(self) -> None:
        recorder = self.recorder(self.new_memory_db())
        subscription = recorder.subscribe()
        with subscription:
            subscription.stop()
            self.assertEqual(list(subscription), [])
        self.assertEqual(recorder.datastore._wakers, ())
        subscription._poll_thread.join(1)
        self.assertFalse(subscription._poll_thread.is_alive())


del AggregateRecorderTestCase
del ApplicationRecorderTestCase
del TrackingRecorderTestCase
del ProcessRecorderTestCase
del InfrastructureFactoryTestCase


def test_finalising_an_application_while_its_shared_lock_is_held_does_not_deadlock() -> None:
    # The garbage collector can finalise a forgotten application in the middle of another
    # application's write to the same shared-cache database, in the writing thread.
    from eventsourcing.application import Application

    env = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": "file:finaliser_deadlock?mode=memory&cache=shared",
    }
    forgotten, busy = Application(env=env), Application(env=env)
    finished = threading.Event()

    def finalise_while_writing() -> None:
        with busy.factory.datastore.write_lock:
            forgotten.__del__()
        finished.set()

    thread = threading.Thread(target=finalise_while_writing, daemon=True)
    thread.start()
    assert finished.wait(timeout=10), "closing an application deadlocked on the shared lock"
    busy.save()  # the busy application still works
    busy.close()
