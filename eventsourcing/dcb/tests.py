"""Base test cases for DCB recorders: subclass, and call the ``_test_*`` methods.

A recorder's test case calls ``self._test_append_read(recorder)`` and
``self._test_append_subscribe(recorder)`` from its own test methods; ``initial_position``
is the position already reached by a recorder that is not empty.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING
from unittest import TestCase
from uuid import uuid4

from eventsourcing.dcb.api import (
    DCBAppendCondition,
    DCBEvent,
    DCBQuery,
    DCBQueryItem,
    DCBRecorder,
    DCBSequencedEvent,
    DCBSubscription,
    TDCBRecorder_co,
)
from eventsourcing.persistence import IntegrityError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["DCBRecorderTestCase", "EnsureSubscriptionBlockAndReceive"]


def _query(*items: tuple[Sequence[str], Sequence[str]]) -> DCBQuery:
    """A query of ``(types, tags)`` items."""
    return DCBQuery(items=[DCBQueryItem(types=list(ty), tags=list(tg)) for ty, tg in items])


class DCBRecorderTestCase(TestCase):
    """Checks reading, appending with conditions, and subscribing, on any DCB recorder."""

    def _check_read(
        self,
        recorder: DCBRecorder,
        query: DCBQuery | None,
        after: int | None,
        expected_data: list[bytes],
        expected_head: int | None,
        limit: int | None = None,
    ) -> None:
        response = recorder.read(query, after=after, limit=limit)
        events = list(response)
        self.assertEqual(expected_data, [e.event.data for e in events], (query, after, limit))
        self.assertEqual(expected_head, response.head, (query, after, limit))
        positions = [e.position for e in events]
        self.assertEqual(sorted(positions), positions, "events must come in order of position")

    def _test_append_read(self, recorder: DCBRecorder, initial_position: int = 0) -> None:
        """Reads by types and tags, heads, limits, and conditions that fail or pass."""
        p0 = initial_position
        everything = recorder.read()
        self.assertEqual(p0, len(list(everything)))
        self.assertEqual(p0, everything.head or 0)

        # One event of type1 tagged X.
        self.assertEqual(p0 + 1, recorder.append([DCBEvent("type1", b"data1", ["tagX"])]))
        type1, type2 = _query((["type1"], [])), _query((["type2"], []))
        tag_x, tag_y = _query(([], ["tagX"])), _query(([], ["tagY"]))
        type1_x = _query((["type1"], ["tagX"]))
        for query, data in [
            (None, [b"data1"]),
            (type1, [b"data1"]),
            (type2, []),
            (tag_x, [b"data1"]),
            (tag_y, []),
            (type1_x, [b"data1"]),
            (_query((["type1"], ["tagY"])), []),
            (_query((["type2"], ["tagX"])), []),
        ]:
            self._check_read(recorder, query, p0, data, p0 + 1)
        self._check_read(recorder, None, p0 + 1, [], p0 + 1)
        self._check_read(recorder, None, p0, [b"data1"], p0 + 1, limit=1)
        self._check_read(recorder, None, None, [], None, limit=0)

        # Two more, in one append: the position returned is the last one's.
        self.assertEqual(
            p0 + 3,
            recorder.append(
                [
                    DCBEvent("type2", b"data2", ["tagA", "tagB"]),
                    DCBEvent("type3", b"data3", ["tagA", "tagC"]),
                ]
            ),
        )
        tag_a, tag_a_b = _query(([], ["tagA"])), _query(([], ["tagA", "tagB"]))
        tag_b_or_c = _query(([], ["tagB"]), ([], ["tagC"]))
        tag_x_or_y = _query(([], ["tagX"]), ([], ["tagY"]))
        type2_a = _query((["type2"], ["tagA"]))
        type2_b_or_type3_c = _query((["type2"], ["tagB"]), (["type3"], ["tagC"]))
        type3_c_or_type2_b = _query((["type3"], ["tagC"]), (["type2"], ["tagB"]))
        for query, after, data in [
            (None, p0, [b"data1", b"data2", b"data3"]),
            (None, p0 + 1, [b"data2", b"data3"]),
            (None, p0 + 2, [b"data3"]),
            (type1, p0 + 1, []),
            (tag_x, p0 + 1, []),
            (type1_x, p0 + 1, []),
            (tag_a, p0, [b"data2", b"data3"]),
            (tag_a_b, p0, [b"data2"]),
            (tag_b_or_c, p0, [b"data2", b"data3"]),
            (tag_x_or_y, p0, [b"data1"]),
            (type2_a, p0, [b"data2"]),
            (type2_a, p0 + 2, []),
            (type2_b_or_type3_c, p0, [b"data2", b"data3"]),
            (type3_c_or_type2_b, p0, [b"data2", b"data3"]),
        ]:
            self._check_read(recorder, query, after, data, p0 + 3)
        # With a limit, the head is the last event returned.
        self._check_read(recorder, None, p0 + 1, [b"data2"], p0 + 2, limit=1)

        # Conditions that match a recorded event fail, and append nothing.
        new = [DCBEvent("type4", b"data4")]
        for condition in [
            DCBAppendCondition(),
            DCBAppendCondition(after=1),
            DCBAppendCondition(type1),
            DCBAppendCondition(type2, after=1),
            DCBAppendCondition(tag_x),
            DCBAppendCondition(tag_a, after=1),
            DCBAppendCondition(type1_x),
            DCBAppendCondition(type2_a, after=1),
            DCBAppendCondition(tag_a_b),
            DCBAppendCondition(tag_b_or_c),
            DCBAppendCondition(tag_x_or_y),
            DCBAppendCondition(type2_b_or_type3_c),
        ]:
            with self.assertRaises(IntegrityError, msg=str(condition)):
                recorder.append(new, condition)
        self.assertEqual(p0 + 3, recorder.read().head)

        # Conditions that match nothing recorded (after their position) pass.
        for passing in [
            None,
            DCBAppendCondition(_query((["typeN"], []))),
            DCBAppendCondition(tag_y),
            DCBAppendCondition(type1, after=p0 + 1),
            DCBAppendCondition(tag_x, after=p0 + 1),
            DCBAppendCondition(type1_x, after=p0 + 1),
        ]:
            recorder.append(new, passing)
        self.assertEqual(p0 + 9, recorder.read().head)

        self._check_enrolment(recorder, p0)

    def _check_enrolment(self, recorder: DCBRecorder, p0: int) -> None:
        """A student joins a course: events with one and two tags, conditions on each."""
        student_id, course_id = f"student-{uuid4()}", f"course-{uuid4()}"
        registered = DCBEvent(
            "StudentRegistered", json.dumps({"max_courses": 10}).encode(), [student_id]
        )
        course = DCBEvent("CourseRegistered", json.dumps({"places": 10}).encode(), [course_id])
        joined = DCBEvent("StudentJoinedCourse", b"{}", [course_id, student_id])
        recorder.append(
            [registered], DCBAppendCondition(_query((["StudentRegistered"], [student_id])), 3)
        )
        recorder.append([course], DCBAppendCondition(_query(([], [course_id])), 3))
        recorder.append([joined], DCBAppendCondition(_query(([], joined.tags)), 3))

        events = list(recorder.read(after=p0))
        self.assertEqual(12, len(events))
        for recorded, appended in zip(events[-3:], [registered, course, joined], strict=True):
            self.assertEqual(appended.type, recorded.event.type)
            self.assertEqual(appended.data, recorded.event.data)
            self.assertEqual(appended.tags, recorded.event.tags)
        self.assertEqual(list(range(p0 + 1, p0 + 13)), [e.position for e in events])

        by_student, by_course = _query(([], [student_id])), _query(([], [course_id]))
        both = _query(([], [course_id, student_id]))
        for query, count, first_position in [
            (by_student, 2, p0 + 10),
            (by_course, 2, p0 + 11),
            (both, 1, p0 + 12),
        ]:
            for after in (p0, p0 + 2):
                response = recorder.read(query, after=after)
                self.assertEqual(count, len(list(response)))
                self.assertEqual(p0 + 12, response.head)
            limited = recorder.read(query, after=p0 + 2, limit=1)
            self.assertEqual(1, len(list(limited)))
            self.assertEqual(first_position, limited.head)

        boundary = _query(
            (["StudentRegistered", "StudentJoinedCourse"], [student_id]),
            (["CourseRegistered", "StudentJoinedCourse"], [course_id]),
        )
        response = recorder.read(boundary, after=p0)
        self.assertEqual(3, len(list(response)))
        self.assertEqual(p0 + 12, response.head)

    def _test_append_subscribe(self, recorder: DCBRecorder, initial_position: int = 0) -> None:
        """A subscription returns what was recorded, blocks, then returns what is new."""
        first = recorder.append([DCBEvent("type1", b"data1", ["tagX"])])
        self.assertEqual(initial_position + 1, first)
        with recorder.subscribe(after=initial_position) as subscription:
            self.assertEqual(first, next(subscription).position)
            waiter = EnsureSubscriptionBlockAndReceive(subscription)
            waiter.has_blocked.wait()
            self.assertFalse(waiter.has_received.wait(timeout=0.5), "should block")
            second = recorder.append([DCBEvent("type1", b"data1", ["tagX"])])
            self.assertEqual(initial_position + 2, second)
            self.assertTrue(waiter.has_received.wait(timeout=1), "should receive")
            assert waiter.received_event is not None
            self.assertEqual(second, waiter.received_event.position)
            waiter.join()


class EnsureSubscriptionBlockAndReceive(threading.Thread):
    """Waits on a thread for the next event of a subscription (started on construction)."""

    def __init__(self, subscription: DCBSubscription[TDCBRecorder_co]):
        super().__init__(daemon=True)
        self.subscription = subscription
        self.has_blocked = threading.Event()
        self.has_received = threading.Event()
        self.received_event: DCBSequencedEvent | None = None
        self.start()

    def run(self) -> None:
        self.has_blocked.set()
        self.received_event = next(self.subscription)
        self.has_received.set()
