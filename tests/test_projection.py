"""Projections into materialised views, and event-sourced projections, on every back end.

The reusable test cases of ``eventsourcing.tests.projection`` run here against an
event-counters view for POPO, SQLite and PostgreSQL. A second view keeps a table of counts
per event topic, updated in the same transaction as its tracking record: it is built while
an application records events, interrupted and resumed, and rebuilt from scratch, and every
build must match the application's log exactly.
"""

from __future__ import annotations

from abc import abstractmethod
from collections import Counter as Tally
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID

import psycopg
import pytest
from psycopg.sql import SQL, Composed
from system_model import WAIT, DogSchool, run_workload

from eventsourcing.application import Application
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, Tracking, TrackingRecorder
from eventsourcing.popo import POPOTrackingRecorder
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.projection import (
    ApplicationSubscription,
    BaseProjectionRunner,
    Projection,
    ProjectionRunner,
)
from eventsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder
from eventsourcing.tests import projection as reusable
from eventsourcing.tests.projection import Counters, EventCountersView
from eventsourcing.utils import get_topic

pytestmark = pytest.mark.timeout(120)

CREATED, SUBSEQUENT = "created", "subsequent"


# ---------------------------------------------------------------------------
# Views: counts kept in the same transaction as the tracking record


class POPOCountsStore(POPOTrackingRecorder):
    """Named counts in memory, changed under the recorder's lock with the tracking record."""

    def __init__(self) -> None:
        super().__init__()
        self._counts: Tally[str] = Tally()

    def _increment(self, name: str, tracking: Tracking) -> None:
        with self._database_lock:
            self.insert_tracking(tracking)  # raises before anything changes
            self._counts[name] += 1

    def _counts_now(self) -> dict[str, int]:
        with self._database_lock:
            return dict(self._counts)


class SQLiteCountsStore(SQLiteTrackingRecorder):
    """A table of named counts, changed in one transaction with the tracking record."""

    def __init__(self, datastore: SQLiteDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)

    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            "CREATE TABLE IF NOT EXISTS counts (name TEXT PRIMARY KEY, count INTEGER) "
            "WITHOUT ROWID",
        ]

    def _increment(self, name: str, tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as cursor:
            self._insert_tracking(cursor, tracking)
            cursor.execute(
                "INSERT INTO counts VALUES (?, 1) "
                "ON CONFLICT (name) DO UPDATE SET count = count + 1",
                (name,),
            )

    def _counts_now(self) -> dict[str, int]:
        return dict(self.datastore.read("SELECT name, count FROM counts", ()))


class PostgresCountsStore(PostgresTrackingRecorder):
    """A table of named counts (named after the tracking table), changed with tracking."""

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self._counts_table: Composed = self.qualified(f"{self.tracking_table_name}_counts")
        self.sql_create_statements.append(
            SQL("CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY, count bigint)").format(
                self._counts_table
            )
        )

    def _increment(self, name: str, tracking: Tracking) -> None:
        try:
            with self.datastore.transaction(commit=True) as curs:
                self._insert_tracking(curs, tracking)
                curs.execute(
                    SQL(
                        "INSERT INTO {0} AS c VALUES (%s, 1) "
                        "ON CONFLICT (name) DO UPDATE SET count = c.count + 1"
                    ).format(self._counts_table),
                    (name,),
                )
        except psycopg.IntegrityError as error:
            raise IntegrityError(str(error)) from error

    def _counts_now(self) -> dict[str, int]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(SQL("SELECT name, count FROM {}").format(self._counts_table))
            return {row["name"]: row["count"] for row in curs.fetchall()}


class EventCountersMixin(EventCountersView):
    """Implements :class:`EventCountersView` on a store's ``_increment`` and ``_counts_now``."""

    @abstractmethod
    def _increment(self, name: str, tracking: Tracking) -> None: ...

    @abstractmethod
    def _counts_now(self) -> dict[str, int]: ...

    def get_created_event_counter(self) -> int:
        return self._counts_now().get(CREATED, 0)

    def get_subsequent_event_counter(self) -> int:
        return self._counts_now().get(SUBSEQUENT, 0)

    def incr_created_event_counter(self, tracking: Tracking) -> None:
        self._increment(CREATED, tracking)

    def incr_subsequent_event_counter(self, tracking: Tracking) -> None:
        self._increment(SUBSEQUENT, tracking)


class POPOEventCounters(POPOCountsStore, EventCountersMixin):
    """Event counters in memory."""


class SQLiteEventCounters(SQLiteCountsStore, EventCountersMixin):
    """Event counters in SQLite."""


class PostgresEventCounters(PostgresCountsStore, EventCountersMixin):
    """Event counters in PostgreSQL."""


class TopicCountsView(TrackingRecorder):
    """How many events of each topic have been processed."""

    @abstractmethod
    def count(self, topic: str, tracking: Tracking) -> None:
        """Count one event of ``topic`` processed at ``tracking``, atomically with it."""

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Return the count of each topic."""


class TopicCountsMixin(TopicCountsView):
    @abstractmethod
    def _increment(self, name: str, tracking: Tracking) -> None: ...

    @abstractmethod
    def _counts_now(self) -> dict[str, int]: ...

    def count(self, topic: str, tracking: Tracking) -> None:
        self._increment(topic, tracking)

    def counts(self) -> dict[str, int]:
        return self._counts_now()


class POPOTopicCounts(POPOCountsStore, TopicCountsMixin):
    """Topic counts in memory."""


class SQLiteTopicCounts(SQLiteCountsStore, TopicCountsMixin):
    """Topic counts in an SQLite table."""


class PostgresTopicCounts(PostgresCountsStore, TopicCountsMixin):
    """Topic counts in a PostgreSQL table."""


class TopicCounts(Projection[TopicCountsView]):
    """Counts every event of the dog school by topic."""

    @singledispatchmethod
    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.count(get_topic(type(domain_event)), tracking)


# ---------------------------------------------------------------------------
# The reusable test cases, per back end


class TestPOPOEventCountersView(reusable.EventCountersViewTestCase):
    def construct_event_counters_view(self) -> EventCountersView:
        return POPOEventCounters()


class TestPOPOEventCountersProjection(reusable.AggregateEventCountersProjectionTestCase):
    view_class = POPOEventCounters


class TestPOPOEventSourcedProjection(reusable.EventSourcedProjectionTestCase):
    pass


class SQLiteFiles:
    """Gives each test its own SQLite database files."""

    env: ClassVar[dict[str, str]]

    @pytest.fixture(autouse=True)
    def _sqlite_env(self, tmp_path: Path) -> None:
        self.env = {  # type: ignore[misc]
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(tmp_path / "views.db"),
            "APPLICATION_SQLITE_DBNAME": str(tmp_path / "application.db"),
            "COUNTERS_SQLITE_DBNAME": str(tmp_path / "counters.db"),
        }


class TestSQLiteEventCountersView(SQLiteFiles, reusable.EventCountersViewTestCase):
    def construct_event_counters_view(self) -> EventCountersView:
        datastore = SQLiteDatastore(db_name=self.env["SQLITE_DBNAME"])
        view = SQLiteEventCounters(datastore)
        view.create_table()
        return view


class TestSQLiteEventCountersProjection(
    SQLiteFiles, reusable.AggregateEventCountersProjectionTestCase
):
    view_class = SQLiteEventCounters


class TestSQLiteEventSourcedProjection(SQLiteFiles, reusable.EventSourcedProjectionTestCase):
    pass


class PostgresDatabase:
    """Gives each test its own PostgreSQL database."""

    env: ClassVar[dict[str, str]]

    @pytest.fixture(autouse=True)
    def _postgres_env(self, request: pytest.FixtureRequest) -> None:
        database = request.getfixturevalue("postgres_database")
        self.env = {"PERSISTENCE_MODULE": "eventsourcing.postgres", **database.env}  # type: ignore[misc]


class TestPostgresEventCountersView(PostgresDatabase, reusable.EventCountersViewTestCase):
    def construct_event_counters_view(self) -> EventCountersView:
        from eventsourcing.persistence import InfrastructureFactory

        factory = InfrastructureFactory[Any].construct(self.env)
        return factory.tracking_recorder(PostgresEventCounters)  # type: ignore[no-any-return]


class TestPostgresEventCountersProjection(
    PostgresDatabase, reusable.AggregateEventCountersProjectionTestCase
):
    view_class = PostgresEventCounters


class TestPostgresEventSourcedProjection(PostgresDatabase, reusable.EventSourcedProjectionTestCase):
    pass


# ---------------------------------------------------------------------------
# A table of counts, built, interrupted, and rebuilt from scratch


@pytest.fixture(params=["popo", "sqlite", "postgres"])
def counts_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, dict[str, str], type[TopicCountsView]]]:
    if request.param == "popo":
        yield "popo", {"PERSISTENCE_MODULE": "eventsourcing.popo"}, POPOTopicCounts
    elif request.param == "sqlite":
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "DOGSCHOOL_SQLITE_DBNAME": str(tmp_path / "school.db"),
            "TOPICCOUNTS_SQLITE_DBNAME": str(tmp_path / "counts1.db"),
        }
        yield "sqlite", env, SQLiteTopicCounts
    else:
        database = request.getfixturevalue("postgres_database")
        env = {"PERSISTENCE_MODULE": "eventsourcing.postgres", **database.env}
        yield "postgres", env, PostgresTopicCounts


def topic_counts_of(school: Application[Any]) -> dict[str, int]:
    """Count the topics of the school's log directly."""
    notifications = school.recorder.select_notifications(start=None, limit=10_000)
    return dict(Tally(n.topic for n in notifications))


def fresh_view_env(name: str, env: dict[str, str], build: int) -> dict[str, str]:
    """The environment of an empty view: a new database file, or new tables."""
    if name == "sqlite":
        path = Path(env["TOPICCOUNTS_SQLITE_DBNAME"]).with_name(f"counts{build}.db")
        return {**env, "TOPICCOUNTS_SQLITE_DBNAME": str(path)}
    return env


def test_counts_view_matches_the_log_while_the_application_records(
    counts_backend: tuple[str, dict[str, str], type[TopicCountsView]],
) -> None:
    _, env, view_class = counts_backend
    with ProjectionRunner(
        application_class=DogSchool, projection_class=TopicCounts, view_class=view_class, env=env
    ) as runner:
        run_workload(runner.app, dogs=5, rounds=4)
        last = runner.app.recorder.max_notification_id()
        runner.wait(last, timeout=WAIT)
        assert runner.view.counts() == topic_counts_of(runner.app)
        assert runner.view.max_tracking_id("DogSchool") == last


@pytest.mark.parametrize("counts_backend", ["sqlite", "postgres"], indirect=True)
def test_counts_view_interrupted_and_rebuilt_from_scratch_matches(
    counts_backend: tuple[str, dict[str, str], type[TopicCountsView]],
) -> None:
    # Persistent back ends only: an in-memory application does not outlive its runner.
    name, env, view_class = counts_backend
    with DogSchool(env=env) as school:
        run_workload(school, dogs=12, rounds=8)
        expected = topic_counts_of(school)
        last = school.recorder.max_notification_id()
    assert last is not None

    # First build, interrupted partway through and resumed by a new runner.
    with ProjectionRunner(
        application_class=DogSchool, projection_class=TopicCounts, view_class=view_class, env=env
    ) as runner:
        runner.wait(last // 3, timeout=WAIT)
    with ProjectionRunner(
        application_class=DogSchool, projection_class=TopicCounts, view_class=view_class, env=env
    ) as runner:
        runner.wait(last, timeout=WAIT)
        assert runner.view.counts() == expected
        first_build = runner.view.counts()

    # Rebuilt from scratch into an empty view (a new file, or new tables), the counts are
    # the same.
    fresh_env = fresh_view_env(name, env, 2)
    if name == "sqlite":
        assert not Path(fresh_env["TOPICCOUNTS_SQLITE_DBNAME"]).exists()
    if name == "postgres":
        rebuilt_cls: type[Projection[TopicCountsView]] = type(
            "TopicCountsRebuilt", (TopicCounts,), {"name": "topiccounts_rebuilt"}
        )
    else:
        rebuilt_cls = TopicCounts
    with ProjectionRunner(
        application_class=DogSchool,
        projection_class=rebuilt_cls,
        view_class=view_class,
        env=fresh_view_env(name, env, 2),
    ) as runner:
        runner.wait(last, timeout=WAIT)
        assert runner.view.counts() == first_build == expected


# ---------------------------------------------------------------------------
# Subscriptions and runner details


def test_application_subscription_yields_events_with_their_positions() -> None:
    with Application[UUID]() as app:
        app.save(Aggregate(), Aggregate())
        with ApplicationSubscription(app, gt=1) as subscription:
            app.save(Aggregate())
            items = [next(subscription), next(subscription)]
            subscription.stop()
            assert list(subscription) == []
        assert [tracking for _, tracking in items] == [
            Tracking(app.name, 2),
            Tracking(app.name, 3),
        ]
        assert all(isinstance(e, Aggregate.Created) for e, _ in items)
        assert subscription.name == app.name
        assert subscription.mapper is app.mapper


def test_wait_returns_quietly_once_stopped() -> None:
    runner = ProjectionRunner(
        application_class=DogSchool, projection_class=TopicCounts, view_class=POPOTopicCounts
    )
    with runner:
        with pytest.raises(TimeoutError):
            runner.wait(1, timeout=0.05)
        runner.stop()
        runner.wait(1, timeout=WAIT)  # no error: the runner was stopped
        runner.run_forever(timeout=0.01)


def test_projecting_something_other_than_an_application_is_refused() -> None:
    with pytest.raises(TypeError, match=r"is not a subclass of .*Application"):
        BaseProjectionRunner(
            projection=Counters(),
            application_class=dict,
            tracking_recorder=POPOTrackingRecorder(),
            topics=(),
        )
