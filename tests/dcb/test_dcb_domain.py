"""Decisions, enduring objects, groups and slices, without any persistence."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest

from eventsourcing.dcb.domain import EnduringObject, Group, Selector, Slice, Tagged
from eventsourcing.dcb.msgpack import Decision, InitialDecision
from eventsourcing.domain import ProgrammingError, event


class Course(EnduringObject[Decision, str]):
    class Registered(InitialDecision):
        course_id: str
        name: str
        places: int

    @event(Registered)
    def __init__(self, *, name: str, places: int) -> None:
        self.name = name
        self.places = places
        self.students: list[str] = []

    class Renamed(Decision):
        name: str

    @event(Renamed)
    def rename(self, name: str, reason: str = "unsaid") -> None:
        self.name = name

    class StudentJoined(Decision):
        student_id: str
        course_id: str

    @event(StudentJoined)
    def _(self, student_id: str) -> None:
        self.students.append(student_id)


class Student(EnduringObject[Decision, str]):
    class Registered(InitialDecision):
        student_id: str
        max_courses: int

    @event(Registered)
    def __init__(self, *, max_courses: int) -> None:
        self.max_courses = max_courses
        self.courses: list[str] = []

    @event(Course.StudentJoined)
    def _(self, course_id: str) -> None:
        self.courses.append(course_id)


class Enrolment(Group[Decision]):
    def __init__(self, student: Student, course: Course) -> None:
        self.student = student
        self.course = course

    def join(self) -> None:
        if len(self.course.students) >= self.course.places:
            raise ValueError("full")
        self.trigger_event(
            Course.StudentJoined, student_id=self.student.id, course_id=self.course.id
        )


def replay(decisions: Sequence[Tagged[Decision]], obj: EnduringObject | None = None) -> object:
    for tagged in decisions:
        obj = tagged.decision.mutate(obj)
    return obj


def test_constructing_an_enduring_object_triggers_its_initial_decision() -> None:
    course = Course(name="Maths", places=2)
    assert re.fullmatch(r"course-[0-9a-f-]{36}", course.id)
    assert (course.name, course.places, course.students) == ("Maths", 2, [])
    [tagged] = course.collect_events()
    assert tagged.tags == [course.id]
    assert isinstance(tagged.decision, Course.Registered)
    assert tagged.decision.course_id == course.id
    assert tagged.decision.originator_topic.endswith(":Course")
    assert course.collect_events() == []


def test_command_methods_trigger_decisions_tagged_with_the_id() -> None:
    course = Course(name="Maths", places=2)
    course.rename("Algebra", reason="scope")
    assert course.name == "Algebra"
    new = course.collect_events()
    assert new[1].tags == [course.id]
    assert new[1].decision == Course.Renamed(name="Algebra")  # reason is no field
    copy = replay(new)
    assert isinstance(copy, Course)
    assert (copy.id, copy.name) == (course.id, "Algebra")


def test_command_methods_check_their_arguments() -> None:
    course = Course(name="Maths", places=2)
    with pytest.raises(TypeError, match="rename"):
        course.rename()  # type: ignore[call-arg]


def test_a_group_decides_across_objects_and_tags_with_every_id() -> None:
    student, course = Student(max_courses=3), Course(name="Maths", places=1)
    enrolment = Enrolment(student, course)
    enrolment.join()
    assert course.students == [student.id] and student.courses == [course.id]
    with pytest.raises(ValueError, match="full"):
        Enrolment(Student(max_courses=1), course).join()
    [joined] = enrolment.collect_events()
    assert joined.tags == [student.id, course.id]
    assert [s.tags for s in enrolment.consistency_boundary()] == [[student.id], [course.id]]
    copy = replay([*course.collect_events(), joined])
    assert isinstance(copy, Course) and copy.students == [student.id]


def test_an_object_without_an_initial_decision_cannot_be_constructed() -> None:
    class Nothing(EnduringObject[Decision, str]):
        pass

    with pytest.raises(ProgrammingError, match="has no InitialDecision class"):
        Nothing()


def test_a_nested_initial_decision_is_enough() -> None:
    class Thing(EnduringObject[Decision, str]):
        class Created(InitialDecision):
            thing_id: str

    thing = Thing()
    thing.trigger_event(Decision)
    new = thing.collect_events()
    assert [t.tags for t in new] == [[thing.id], [thing.id]]
    copy = replay(new)
    assert isinstance(copy, Thing) and copy.id == thing.id


def test_a_subclass_applies_its_bases_decorated_methods() -> None:
    class SmallCourse(Course):
        class Registered(InitialDecision):  # its id attribute is named after the class
            smallcourse_id: str
            name: str
            places: int

    small = SmallCourse(name="Latin", places=1)
    small.rename("Greek")
    copy = replay(small.collect_events())
    assert isinstance(copy, SmallCourse) and copy.name == "Greek"


def test_a_slice_applies_the_decisions_it_selects() -> None:
    class RenameCourse(Slice[Decision]):
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

    assert RenameCourse.do_projection
    assert RenameCourse.projected_types == [Course.Registered, Course.Renamed]
    course = Course(name="Maths", places=2)
    rename = RenameCourse(course.id, "Algebra")
    replay(course.collect_events(), rename)  # type: ignore[arg-type]
    assert rename.name == "Maths"
    rename.execute()
    assert rename.name == "Algebra"
    [renamed] = rename.collect_events()
    assert renamed.tags == [course.id]
    rename.execute()  # already done: nothing more
    assert rename.collect_events() == []


def test_decorating_with_a_class_that_is_no_decision_is_refused() -> None:
    from eventsourcing.domain import Aggregate

    with pytest.raises((ProgrammingError, TypeError)):

        class Wrong(EnduringObject[Decision, str]):
            @event(Aggregate.Event)
            def change(self) -> None:
                pass
