"""The recorder extension points of ``eventsourcing`` 9.x, as its documentation uses them.

A recorder that overrides ``_insert_events(cursor, stored_events, **kwargs)`` writes rows of
its own (here, a searchable table of page bodies: SQLite FTS5, or a plain PostgreSQL table)
in the same transaction as the events, from the keyword arguments given to ``save()`` or
collected by a policy. Those rows must be written, found, and never outlive a failed save.
Custom views record tracking with ``_insert_tracking`` (and, on POPO,
``_assert_tracking_uniqueness``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any
from uuid import UUID

import pytest
from psycopg.sql import SQL

from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import IntegrityError, StoredEvent, Tracking
from eventsourcing.popo import POPOTrackingRecorder
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresProcessRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteProcessRecorder
from eventsourcing.system import ProcessApplication, SingleThreadedRunner, System
from eventsourcing.utils import get_topic

PageRows = Sequence[tuple[UUID, str]]


class Page(Aggregate):
    """A wiki page."""

    @event("Created")
    def __init__(self, body: str) -> None:
        self.body = body

    @event("BodyUpdated")
    def update_body(self, body: str) -> None:
        """Replace the body."""
        self.body = body


class SQLitePages:
    """Keeps page bodies in an FTS5 table, written with the events (before them, so that a
    failed insert of the events must roll the pages back)."""

    def construct_create_table_statements(self) -> list[str]:
        """Add the pages table."""
        return [
            *super().construct_create_table_statements(),  # type: ignore[misc]
            "CREATE VIRTUAL TABLE IF NOT EXISTS pages USING fts5(page_id UNINDEXED, body)",
        ]

    def _insert_events(self, c: Any, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Any:
        for page_id, body in kwargs.get("insert_pages", ()):
            c.execute("INSERT INTO pages VALUES (?, ?)", (str(page_id), body))
        for page_id, body in kwargs.get("update_pages", ()):
            c.execute("UPDATE pages SET body = ? WHERE page_id = ?", (body, str(page_id)))
        return super()._insert_events(c, stored_events, **kwargs)  # type: ignore[misc]

    def search_pages(self, query: str) -> list[UUID]:
        """Return the ids of pages whose body matches ``query``."""
        datastore: Any = self.datastore  # type: ignore[attr-defined]
        rows = datastore.read("SELECT page_id FROM pages WHERE pages MATCH ?", (query,))
        return sorted(UUID(row[0]) for row in rows)


class SQLitePagesApplicationRecorder(SQLitePages, SQLiteApplicationRecorder):
    """An application recorder that keeps page bodies."""


class SQLitePagesProcessRecorder(SQLitePages, SQLiteProcessRecorder):
    """A process recorder that keeps page bodies."""


class PostgresPages:
    """Keeps page bodies in a table of the application's own, written with the events."""

    def __init__(self, datastore: Any, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)  # type: ignore[call-arg]
        self.pages_table = self.qualified(  # type: ignore[attr-defined]
            f"{kwargs['events_table_name']}_pages"
        )
        self.sql_create_statements.append(  # type: ignore[attr-defined]
            SQL("CREATE TABLE IF NOT EXISTS {} (page_id uuid PRIMARY KEY, body text)").format(
                self.pages_table
            )
        )

    def _insert_events(self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Any:
        for page_id, body in kwargs.get("insert_pages", ()):
            curs.execute(
                SQL("INSERT INTO {} VALUES (%s, %s)").format(self.pages_table), (page_id, body)
            )
        for page_id, body in kwargs.get("update_pages", ()):
            curs.execute(
                SQL("UPDATE {} SET body = %s WHERE page_id = %s").format(self.pages_table),
                (body, page_id),
            )
        return super()._insert_events(curs, stored_events, **kwargs)  # type: ignore[misc]

    def search_pages(self, query: str) -> list[UUID]:
        """Return the ids of pages whose body contains ``query``."""
        datastore: Any = self.datastore  # type: ignore[attr-defined]
        with datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL("SELECT page_id FROM {} WHERE body ILIKE %s").format(self.pages_table),
                (f"%{query}%",),
            )
            return sorted(row["page_id"] for row in curs.fetchall())


class PostgresPagesApplicationRecorder(PostgresPages, PostgresApplicationRecorder):
    """An application recorder that keeps page bodies."""


class PostgresPagesProcessRecorder(PostgresPages, PostgresProcessRecorder):
    """A process recorder that keeps page bodies."""


class Wiki(Application[UUID]):
    """Creates and edits pages, and searches their bodies."""

    def create_page(self, body: str) -> UUID:
        """Create a page."""
        page = Page(body)
        self.save(page, insert_pages=[(page.id, body)])
        return page.id

    def update_page(self, page: Page, body: str) -> None:
        """Change a page (as loaded by the caller)."""
        page.update_body(body)
        self.save(page, update_pages=[(page.id, body)])

    def search(self, query: str) -> list[UUID]:
        """Return the ids of the pages that match."""
        return self.recorder.search_pages(query)  # type: ignore[attr-defined,no-any-return]


class Index(ProcessApplication[UUID]):
    """Indexes the wiki's pages from its events, through its recorder's page table."""

    def policy(self, domain_event: Any, processing_event: ProcessingEvent[UUID]) -> None:
        """Collect the page body change with no events of its own."""
        if isinstance(domain_event, Page.Created):
            processing_event.collect_events(
                insert_pages=[(domain_event.originator_id, domain_event.body)]
            )
        elif isinstance(domain_event, Page.BodyUpdated):
            processing_event.collect_events(
                update_pages=[(domain_event.originator_id, domain_event.body)]
            )

    def search(self, query: str) -> list[UUID]:
        """Return the ids of the pages that match."""
        return self.recorder.search_pages(query)  # type: ignore[attr-defined,no-any-return]


@pytest.fixture(params=["sqlite", "postgres"])
def env(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[dict[str, str]]:
    """Settings for a Wiki and an Index with page-keeping recorders."""
    if request.param == "sqlite":
        yield {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "WIKI_SQLITE_DBNAME": str(tmp_path / "wiki.db"),
            "INDEX_SQLITE_DBNAME": str(tmp_path / "index.db"),
            "APPLICATION_RECORDER_TOPIC": get_topic(SQLitePagesApplicationRecorder),
            "PROCESS_RECORDER_TOPIC": get_topic(SQLitePagesProcessRecorder),
        }
        return
    database = request.getfixturevalue("postgres_database")
    yield {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        **database.env,
        "APPLICATION_RECORDER_TOPIC": get_topic(PostgresPagesApplicationRecorder),
        "PROCESS_RECORDER_TOPIC": get_topic(PostgresPagesProcessRecorder),
    }


def test_rows_written_by_the_hook_are_found(env: dict[str, str]) -> None:
    wiki = Wiki(env=env)
    try:
        # Given pages saved with rows of the recorder's own,
        dogs = wiki.create_page("dogs like walks")
        cats = wiki.create_page("cats like naps")
        wiki.update_page(wiki.repository.get(cats), "cats like walks too")
        # then searches find them, as last saved.
        assert wiki.search("walks") == sorted([dogs, cats])
        assert wiki.search("naps") == []
        assert wiki.recorder.max_notification_id() == 3
    finally:
        wiki.close()


def test_a_save_that_fails_on_a_version_conflict_leaves_no_row_behind(
    env: dict[str, str],
) -> None:
    wiki = Wiki(env=env)
    try:
        # Given a page, and two copies of it loaded at the same version,
        page_id = wiki.create_page("first draft")
        first, second = wiki.repository.get(page_id), wiki.repository.get(page_id)
        wiki.update_page(first, "second draft")
        # when a save from the stale copy, with page rows to write, conflicts,
        second.update_body("lost draft")
        ghost = Page("ghost page")
        with pytest.raises(IntegrityError):
            wiki.save(
                second,
                update_pages=[(page_id, "lost draft")],
                insert_pages=[(ghost.id, "ghost page")],
            )
        # then none of its rows were written, neither the update nor the new page.
        assert wiki.search("lost") == []
        assert wiki.search("ghost") == []
        assert wiki.search("second") == [page_id]
        assert wiki.recorder.max_notification_id() == 2
    finally:
        wiki.close()


def test_a_process_application_writes_the_rows_its_policy_collects(env: dict[str, str]) -> None:
    # Given pages created and edited before the index ran,
    wiki = Wiki(env=env)
    ids = [wiki.create_page(f"page {i} about {'dogs' if i % 2 else 'cats'}") for i in range(6)]
    wiki.update_page(wiki.repository.get(ids[0]), "page 0 about dogs now")
    wiki.close()
    # when the index catches up (batches of many notifications allowed),
    system = System(pipes=[[Wiki, Index]])
    with SingleThreadedRunner(system, env={**env, "PROCESS_BATCH_SIZE": "50"}) as runner:
        index = runner.get(Index)
        index.pull_and_process("Wiki")
        # then the rows its policy collected, one notification's after another's, are all
        # written: none is merged away.
        assert index.search("dogs") == sorted([ids[0], ids[1], ids[3], ids[5]])
        assert index.search("cats") == sorted([ids[2], ids[4]])
        assert index.recorder.max_tracking_id("Wiki") == 7
        # and a new page is indexed as it is saved.
        new = runner.get(Wiki).create_page("a page about birds")
        assert index.search("birds") == [new]


class CountingView(POPOTrackingRecorder):
    """A POPO view that counts events, as 9.x's documentation writes one."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def increment(self, tracking: Tracking) -> None:
        """Count one event, recording its position with it."""
        with self._database_lock:
            self._assert_tracking_uniqueness(tracking)
            self._insert_tracking(tracking)
            self.count += 1


def test_a_popo_view_uses_the_tracking_hooks() -> None:
    view = CountingView()
    view.increment(Tracking("upstream", 1))
    view.increment(Tracking("upstream", 2))
    with pytest.raises(IntegrityError):
        view.increment(Tracking("upstream", 2))
    assert view.count == 2
    assert view.max_tracking_id("upstream") == 2
