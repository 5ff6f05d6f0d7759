"""A linearizability checker for key-value histories (Wing and Gong's search, per key).

A history is a list of :class:`Operation`: what a client asked for, when it asked
(``invoked``), what it got back and when (``completed``; None if the client never heard,
in which case the operation may or may not have taken effect). The history is linearizable
if every operation can be given one instant between its invocation and its completion at
which it takes effect, so that the results are those of a sequential key-value store.

Linearizability is local (Herlihy and Wing), so each key is checked on its own, as Knossos
does: the search of Wing and Gong, with Lowe's memo of (operations linearized, state)
configurations already explored, over a register whose value is a string or None.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

ABSENT = None


@dataclass
class Operation:
    """One call of a client: ``put``, ``get``, ``delete`` or ``cas``."""

    op: str
    key: str
    value: str | None = None  # put's value, cas's new value
    expected: str | None = None  # cas's expected value
    result: Any = None
    invoked: float = 0.0
    completed: float | None = None  # None: no reply (it may or may not have happened)
    client: str = ""

    def __str__(self) -> str:
        """The call and its outcome, e.g. ``cas x 1->2 = True [0.10, 0.30]``."""
        if self.op == "put":
            call = f"put {self.key}={self.value}"
        elif self.op == "cas":
            call = f"cas {self.key} {self.expected}->{self.value}"
        else:
            call = f"{self.op} {self.key}"
        end = "pending" if self.completed is None else f"{self.completed:.4f}"
        return f"{self.client} {call} = {self.result!r} [{self.invoked:.4f}, {end}]"


def step(state: str | None, operation: Operation) -> tuple[str | None, Any]:
    """The sequential register: the state after ``operation``, and its result."""
    if operation.op == "put":
        return operation.value, None
    if operation.op == "get":
        return state, state
    if operation.op == "delete":
        return ABSENT, None
    if operation.op == "cas":
        if state == operation.expected:
            return operation.value, True
        return state, False
    raise ValueError(f"Unknown operation {operation.op!r}")


@dataclass
class _Entry:
    """A call or a return in the doubly linked list of the search."""

    time: float
    index: int  # the operation's index
    is_call: bool
    match: _Entry | None = None  # a call's return
    prev: _Entry | None = field(default=None, repr=False)
    next: _Entry | None = field(default=None, repr=False)


def _entries(operations: list[Operation]) -> _Entry:
    """The list of calls and returns by time (calls first at equal times); its head."""
    events: list[_Entry] = []
    for i, operation in enumerate(operations):
        call = _Entry(operation.invoked, i, True)
        end = math.inf if operation.completed is None else operation.completed
        ret = _Entry(end, i, False)
        call.match = ret
        events += [call, ret]
    # At equal times, a call goes first: the two operations count as concurrent.
    events.sort(key=lambda e: (e.time, not e.is_call))
    head = _Entry(-math.inf, -1, False)
    previous = head
    for entry in events:
        previous.next = entry
        entry.prev = previous
        previous = entry
    return head


def _lift(entry: _Entry) -> None:
    """Take a call and its return out of the list."""
    for e in (entry, entry.match):
        assert e is not None and e.prev is not None
        e.prev.next = e.next
        if e.next is not None:
            e.next.prev = e.prev


def _unlift(entry: _Entry) -> None:
    """Put a call and its return back (in the reverse order of :func:`_lift`)."""
    for e in (entry.match, entry):
        assert e is not None and e.prev is not None
        e.prev.next = e
        if e.next is not None:
            e.next.prev = e


def is_linearizable(operations: list[Operation], initial: str | None = ABSENT) -> bool:
    """Whether the operations on one key are linearizable (Wing and Gong, with a memo).

    An operation without a reply may be left out (it never took effect), or take effect at
    any time after its invocation; its result is not checked.
    """
    head = _entries(operations)
    state = initial
    linearized = 0  # bit i: operation i is linearized
    seen: set[tuple[int, str | None]] = set()
    stack: list[tuple[_Entry, str | None]] = []
    entry = head.next
    while entry is not None:
        operation = operations[entry.index]
        if entry.is_call:
            new_state, result = step(state, operation)
            pending = operation.completed is None
            if pending or result == operation.result:
                configuration = (linearized | 1 << entry.index, new_state)
                if configuration not in seen:
                    seen.add(configuration)
                    stack.append((entry, state))
                    state = new_state
                    linearized |= 1 << entry.index
                    _lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        elif operation.completed is None:
            # Every operation that returned is linearized; the rest may never have happened.
            return True
        else:
            # This operation returned before any remaining one could take effect: backtrack.
            if not stack:
                return False
            entry, state = stack.pop()
            linearized &= ~(1 << entry.index)
            _unlift(entry)
            entry = entry.next
    return True


def check(operations: Iterable[Operation]) -> list[str]:
    """Check each key of a history; return the keys that are not linearizable."""
    by_key: dict[str, list[Operation]] = {}
    for operation in operations:
        by_key.setdefault(operation.key, []).append(operation)
    return sorted(key for key, ops in by_key.items() if not is_linearizable(ops))


def assert_linearizable(operations: list[Operation]) -> None:
    """Fail with the offending keys' operations if the history is not linearizable."""
    bad = check(operations)
    if bad:
        lines = [str(op) for op in operations if op.key in bad]
        raise AssertionError(f"Not linearizable on keys {bad}:\n" + "\n".join(lines))


class History:
    """Records operations from many threads, with their invocation and completion times."""

    def __init__(self) -> None:
        """Start empty; times count from now."""
        self.operations: list[Operation] = []
        self._lock = threading.Lock()
        self._start = time.monotonic()

    def now(self) -> float:
        """Seconds since the history started."""
        return time.monotonic() - self._start

    def record(
        self,
        call: Callable[[], Any],
        operation: Operation,
        *,
        unknown_outcome: tuple[type[BaseException], ...] = (),
    ) -> Operation:
        """Run ``call`` for ``operation``, recording its times and result.

        An error of ``unknown_outcome`` leaves the operation without a reply (pending).
        """
        operation.invoked = self.now()
        try:
            operation.result = call()
        except unknown_outcome:
            operation.completed = None
        else:
            operation.completed = self.now()
        with self._lock:
            self.operations.append(operation)
        return operation
