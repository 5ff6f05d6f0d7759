"""Every DCB recorder passes our base test cases and 9.5.6's, subclassed as a user would.

POPO, SQLite (a file) and PostgreSQL (a database of the test's own) each run
``_test_append_read`` and ``_test_append_subscribe`` of :mod:`eventsourcing.dcb.tests`
and of 9.5.6's ``eventsourcing/dcb/tests.py`` (loaded from its installed file, importing
our package).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from eventsourcing.dcb.api import DCBRecorder
from eventsourcing.dcb.popo import InMemoryDCBRecorder
from eventsourcing.dcb.postgres_tt import PostgresDCBRecorderTT
from eventsourcing.dcb.sqlite import SQLiteDCBRecorder
from eventsourcing.dcb.tests import DCBRecorderTestCase
from eventsourcing.sqlite import SQLiteDatastore

from .helpers import load_anchor_module, postgres_datastore

AnchorDCBRecorderTestCase: Any = load_anchor_module(
    "dcb/tests.py", "anchor_dcb_tests"
).DCBRecorderTestCase


class _Tests:
    """The two tests, for any recorder that ``create_recorder`` makes."""

    def create_recorder(self) -> DCBRecorder:
        raise NotImplementedError

    def test_append_read(self) -> None:
        self._test_append_read(self.create_recorder())  # type: ignore[attr-defined]

    def test_append_subscribe(self) -> None:
        self._test_append_subscribe(self.create_recorder())  # type: ignore[attr-defined]

    def test_append_read_after_existing_events(self) -> None:
        recorder = self.create_recorder()
        from eventsourcing.dcb.api import DCBEvent

        position = recorder.append([DCBEvent("earlier", b"", ["other"])] * 5)
        self._test_append_read(recorder, initial_position=position)  # type: ignore[attr-defined]


class _POPO(_Tests):
    def create_recorder(self) -> DCBRecorder:
        return InMemoryDCBRecorder()


class _SQLite(_Tests):
    tmp_path: Path

    @pytest.fixture(autouse=True)
    def _tmp(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path

    def create_recorder(self) -> DCBRecorder:
        datastore = SQLiteDatastore(str(self.tmp_path / "dcb.db"))
        self.addCleanup(datastore.close)  # type: ignore[attr-defined]
        recorder = SQLiteDCBRecorder(datastore)
        recorder.create_table()
        return recorder


class _Postgres(_Tests):
    @pytest.fixture(autouse=True)
    def _database(self, postgres_database: Any) -> None:
        self.db = postgres_database

    def create_recorder(self) -> DCBRecorder:
        datastore = postgres_datastore(self.db)
        self.addCleanup(datastore.close)  # type: ignore[attr-defined]
        recorder = PostgresDCBRecorderTT(datastore)
        recorder.create_table()
        return recorder


class TestPOPO(_POPO, DCBRecorderTestCase):
    pass


class TestPOPOWithAnchorCases(_POPO, AnchorDCBRecorderTestCase):  # type: ignore[misc]
    pass


class TestSQLite(_SQLite, DCBRecorderTestCase):
    pass


class TestSQLiteWithAnchorCases(_SQLite, AnchorDCBRecorderTestCase):  # type: ignore[misc]
    pass


class TestPostgres(_Postgres, DCBRecorderTestCase):
    pass


class TestPostgresWithAnchorCases(_Postgres, AnchorDCBRecorderTestCase):  # type: ignore[misc]
    pass
