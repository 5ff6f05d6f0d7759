"""The DCB application and repository, on each persistence module.

The course enrolment of the DCB examples: register students and courses, and join a
student to a course only while both have room, deciding across both objects with the
consistency boundary of the two.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from eventsourcing.dcb.application import DCBApplication
from eventsourcing.dcb.msgpack import MessagePackMapper
from eventsourcing.dcb.persistence import NotFoundError
from eventsourcing.persistence import IntegrityError
from eventsourcing.utils import get_topic

from .test_dcb_domain import Course, Enrolment, Student


class Courses(DCBApplication):
    env = {"MAPPER_TOPIC": get_topic(MessagePackMapper)}

    def register_course(self, name: str, places: int) -> str:
        course = Course(name=name, places=places)
        self.repository.save(course)
        return course.id

    def register_student(self, max_courses: int) -> str:
        student = Student(max_courses=max_courses)
        self.repository.save(student)
        return student.id

    def join(self, student_id: str, course_id: str) -> None:
        enrolment = self.repository.get_group(Enrolment, student_id, course_id)
        enrolment.join()
        self.repository.save(enrolment)


@pytest.fixture(params=["popo", "sqlite", "postgres"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    if request.param == "popo":
        yield {}
    elif request.param == "sqlite":
        yield {
            "PERSISTENCE_MODULE": "eventsourcing.dcb.sqlite",
            "SQLITE_DBNAME": str(tmp_path / "courses.db"),
        }
    else:
        db = request.getfixturevalue("postgres_database")
        yield {"PERSISTENCE_MODULE": "eventsourcing.dcb.postgres_tt", **db.env}


def test_enrolment(env: dict[str, str]) -> None:
    with Courses(env) as app:
        maths = app.register_course("Maths", places=1)
        alice, bob = app.register_student(2), app.register_student(2)
        app.join(alice, maths)
        with pytest.raises(ValueError, match="full"):
            app.join(bob, maths)
        course = cast(Course, app.repository.get(maths))
        assert (course.name, course.students) == ("Maths", [alice])
        student = cast(Student, app.repository.get(alice))
        assert student.courses == [maths]
        assert student.last_known_position == 4
        assert app.repository.get_many(alice, "student-nobody")[1] is None
        with pytest.raises(NotFoundError):
            app.repository.get("course-nobody")


def test_a_stale_perspective_is_not_saved(env: dict[str, str]) -> None:
    with Courses(env) as app:
        maths = app.register_course("Maths", places=2)
        alice, bob = app.register_student(2), app.register_student(2)
        first = app.repository.get_group(Enrolment, alice, maths)
        second = app.repository.get_group(Enrolment, bob, maths)
        first.join()
        app.repository.save(first)
        second.join()
        with pytest.raises(IntegrityError):
            app.repository.save(second)
        # Brought up to date, the decision is made again, and saved.
        app.join(bob, maths)
        assert cast(Course, app.repository.get(maths)).students == [alice, bob]


def test_advance_applies_only_what_is_new(env: dict[str, str]) -> None:
    with Courses(env) as app:
        maths = app.register_course("Maths", places=2)
        course = cast(Course, app.repository.get(maths))
        other = cast(Course, app.repository.get(maths))
        other.rename("Algebra")
        app.repository.save(other)
        assert course.name == "Maths"
        app.repository.advance(course)
        assert course.name == "Algebra"
        assert course.last_known_position == 2


def test_application_names_and_environment() -> None:
    class MyApp(DCBApplication):
        pass

    class Named(DCBApplication):
        name = "other"

    assert MyApp().name == "MyApp" and Named().name == "other"
    with DCBApplication({"NAME": "value"}) as app:
        assert app.env["NAME"] == "value"
        assert not hasattr(app, "repository")  # no mapper, no repository


def test_a_mapper_topic_that_is_no_dcb_mapper_is_refused() -> None:
    with pytest.raises(TypeError, match="is not a DCBMapper"):
        DCBApplication({"MAPPER_TOPIC": "eventsourcing.persistence:Mapper"})


def test_events_read_back_as_tagged_decisions(env: dict[str, str]) -> None:
    with Courses(env) as app:
        maths = app.register_course("Maths", places=2)
        [tagged] = list(app.events.read())
        assert tagged.tags == [maths]
        assert isinstance(tagged.decision, Course.Registered)
        assert tagged.decision.places == 2


def test_do_advances_executes_and_saves_a_slice(env: dict[str, str]) -> None:
    from eventsourcing.dcb.domain import Selector, Slice
    from eventsourcing.dcb.msgpack import Decision
    from eventsourcing.domain import event

    class Rename(Slice[Decision]):
        def __init__(self, course_id: str, name: str) -> None:
            self.course_id, self.new_name, self.name = course_id, name, ""

        def consistency_boundary(self) -> Selector:
            return Selector(types=[Course.Registered, Course.Renamed], tags=[self.course_id])

        @event(Course.Registered)
        def _(self, name: str) -> None:
            self.name = name

        @event(Course.Renamed)
        def _(self, name: str) -> None:
            self.name = name

        def execute(self) -> None:
            if self.name != self.new_name:
                self.trigger_event(Course.Renamed, [self.course_id], name=self.new_name)

    with Courses(env) as app:
        maths = app.register_course("Maths", places=2)
        done: Any = app.do(Rename(maths, "Algebra"))
        assert done.name == "Algebra"
        assert cast(Course, app.repository.get(maths)).name == "Algebra"
        app.do(Rename(maths, "Algebra"))  # nothing to decide: nothing saved
        assert len(list(app.events.read())) == 2
