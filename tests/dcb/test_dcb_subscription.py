"""Following a DCB application: tagged decisions with tracking, exactly once, resumable.

A follower processes the application's decisions into a view that records each tracking
record with its change; stopped and started again from the position its view reached, it
processes every decision once. Appends from another process wake the subscription.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from eventsourcing.dcb.application import DCBApplication
from eventsourcing.dcb.msgpack import MessagePackMapper
from eventsourcing.dcb.subscription import DCBApplicationSubscription
from eventsourcing.persistence import ProgrammingError, Tracking
from eventsourcing.popo import POPOTrackingRecorder
from eventsourcing.utils import get_topic

from .test_dcb_domain import Course


class CourseCounts(POPOTrackingRecorder):
    """A view: how many courses were registered and renamed, with its tracking."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    def count(self, kind: str, tracking: Tracking) -> None:
        with self._database_lock:
            self._assert_tracking_uniqueness(tracking)  # a repeat would fail here
            self._insert_tracking(tracking)
            self.counts[kind] = self.counts.get(kind, 0) + 1


def follow(app: DCBApplication, view: CourseCounts, until: int, topics: Any = ()) -> None:
    """Process decisions after the view's position until position ``until``."""
    gt = view.max_tracking_id(app.name)
    with DCBApplicationSubscription(app, gt=gt, topics=topics) as subscription:
        for tagged, tracking in subscription:
            view.count(type(tagged.decision).__name__, tracking)
            if tracking.notification_id >= until:
                break


@pytest.fixture(params=["popo", "sqlite", "postgres"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    mapper = {"MAPPER_TOPIC": get_topic(MessagePackMapper)}
    if request.param == "popo":
        yield mapper
    elif request.param == "sqlite":
        db = str(tmp_path / "courses.db")
        yield {**mapper, "PERSISTENCE_MODULE": "eventsourcing.dcb.sqlite", "SQLITE_DBNAME": db}
    else:
        db = request.getfixturevalue("postgres_database")
        yield {**mapper, "PERSISTENCE_MODULE": "eventsourcing.dcb.postgres_tt", **db.env}


def save_course(app: DCBApplication, renames: int) -> int:
    course = Course(name="c", places=1)
    for i in range(renames):
        course.rename(f"c{i}")
    return app.repository.save(course)


def test_each_decision_is_processed_once_across_restarts(env: dict[str, str]) -> None:
    with DCBApplication(env) as app:
        view = CourseCounts()
        first = save_course(app, renames=2)
        follow(app, view, until=first)
        assert view.counts == {"Registered": 1, "Renamed": 2}
        assert view.max_tracking_id(app.name) == first

        second = save_course(app, renames=1)
        follow(app, view, until=second)  # resumes after the view's position
        assert view.counts == {"Registered": 2, "Renamed": 3}
        assert view.max_tracking_id(app.name) == second == 5


def test_topics_select_decisions_of_those_classes(env: dict[str, str]) -> None:
    with DCBApplication(env) as app:
        view = CourseCounts()
        save_course(app, renames=2)
        last = save_course(app, renames=0)
        follow(app, view, until=last, topics=[get_topic(Course.Registered)])
        assert view.counts == {"Registered": 2}


def test_new_decisions_wake_a_waiting_follower(env: dict[str, str]) -> None:
    with DCBApplication(env) as app:
        view = CourseCounts()
        thread = threading.Thread(target=follow, args=(app, view, 2))
        thread.start()
        assert not view.counts
        save_course(app, renames=1)
        thread.join(timeout=5)
        assert not thread.is_alive()
        assert view.counts == {"Registered": 1, "Renamed": 1}


APPEND_SCRIPT = """
import sys
from eventsourcing.dcb.application import DCBApplication
from tests.dcb.test_dcb_domain import Course
app = DCBApplication(dict(a.split("=", 1) for a in sys.argv[1:]))
app.repository.save(Course(name="from another process", places=1))
app.close()
"""


@pytest.mark.parametrize("module", ["sqlite", "postgres"])
def test_appends_from_another_process_wake_the_follower(
    module: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env = {"MAPPER_TOPIC": get_topic(MessagePackMapper)}
    if module == "sqlite":
        env |= {
            "PERSISTENCE_MODULE": "eventsourcing.dcb.sqlite",
            "SQLITE_DBNAME": str(tmp_path / "courses.db"),
        }
    else:
        db = request.getfixturevalue("postgres_database")
        env |= {"PERSISTENCE_MODULE": "eventsourcing.dcb.postgres_tt", **db.env}
    with DCBApplication(env) as app:
        view = CourseCounts()
        thread = threading.Thread(target=follow, args=(app, view, 1))
        thread.start()
        root = Path(__file__).parents[2]
        args = [f"{k}={v}" for k, v in env.items()]
        subprocess.run([sys.executable, "-c", APPEND_SCRIPT, *args], cwd=root, check=True)
        thread.join(timeout=10)
        assert not thread.is_alive()
        assert view.counts == {"Registered": 1}


def test_an_application_without_a_mapper_cannot_be_followed() -> None:
    with pytest.raises(ProgrammingError, match="MAPPER_TOPIC"):
        DCBApplicationSubscription(cast(Any, DCBApplication()))
