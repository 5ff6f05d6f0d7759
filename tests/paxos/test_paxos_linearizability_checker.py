"""The linearizability checker accepts linearizable histories and rejects the others."""

from __future__ import annotations

import random

from linearizability import Operation, check, is_linearizable, step


def op(
    kind: str,
    result: object,
    invoked: float,
    completed: float | None,
    value: str | None = None,
    expected: str | None = None,
    key: str = "x",
) -> Operation:
    """An operation on ``key`` (x by default)."""
    return Operation(kind, key, value, expected, result, invoked, completed)


def put(value: str, start: float, end: float | None) -> Operation:
    """A put of ``value``."""
    return op("put", None, start, end, value=value)


def get(result: str | None, start: float, end: float | None) -> Operation:
    """A get that returned ``result``."""
    return op("get", result, start, end)


def cas(expected: str | None, new: str, result: bool, start: float, end: float | None) -> Operation:
    """A compare-and-set that returned ``result``."""
    return op("cas", result, start, end, value=new, expected=expected)


# ---------------------------------------------------------------------------------------------
# Known-good histories


def test_sequential_history() -> None:
    history = [
        get(None, 0, 1),
        put("1", 2, 3),
        get("1", 4, 5),
        cas("1", "2", True, 6, 7),
        cas("1", "3", False, 8, 9),
        op("delete", None, 10, 11),
        get(None, 12, 13),
    ]
    assert is_linearizable(history)


def test_a_read_concurrent_with_a_write_may_see_either_value() -> None:
    assert is_linearizable([put("1", 0, 1), put("2", 2, 6), get("1", 3, 4)])
    assert is_linearizable([put("1", 0, 1), put("2", 2, 6), get("2", 3, 4)])
    # ... but once a read saw the new value, a later read may not see the old one.
    assert not is_linearizable([put("1", 0, 1), put("2", 2, 9), get("2", 3, 4), get("1", 5, 6)])


def test_concurrent_writes_in_either_order() -> None:
    writes = [put("1", 0, 5), put("2", 1, 4)]
    assert is_linearizable([*writes, get("1", 6, 7)])
    assert is_linearizable([*writes, get("2", 6, 7)])


def test_one_of_two_racing_cas_applies() -> None:
    history = [put("0", 0, 1), cas("0", "a", True, 2, 5), cas("0", "b", False, 3, 6)]
    assert is_linearizable([*history, get("a", 7, 8)])
    assert not is_linearizable([*history, get("b", 7, 8)])


def test_an_operation_without_reply_may_or_may_not_have_happened() -> None:
    pending = put("1", 0, None)
    assert is_linearizable([pending, get(None, 2, 3)])
    assert is_linearizable([pending, get("1", 2, 3)])
    assert is_linearizable([pending, get(None, 2, 3), get("1", 4, 5)])
    # Once seen, it has happened.
    assert not is_linearizable([pending, get("1", 2, 3), get(None, 4, 5)])


def test_keys_are_checked_separately() -> None:
    history = [put("1", 0, 1), op("put", None, 0, 1, value="9", key="y"), get("1", 2, 3)]
    history.append(op("get", "9", 2, 3, key="y"))
    assert check(history) == []


def test_random_linearizable_histories_are_accepted() -> None:
    """Histories made by running a register with a linearization point inside each call."""
    rng = random.Random(7)
    for _ in range(200):
        assert is_linearizable(random_linearizable_history(rng, operations=12))


def random_linearizable_history(rng: random.Random, operations: int) -> list[Operation]:
    """Overlapping calls on one key, each taking effect at a random instant within it."""
    calls = []
    for _ in range(operations):
        start = rng.uniform(0, 10)
        end = start + rng.uniform(0.01, 3)
        point = rng.uniform(start, end)
        kind = rng.choice(["put", "get", "cas", "delete"])
        value = rng.choice("abc")
        expected = rng.choice(["a", "b", None])
        calls.append((point, op(kind, None, start, end, value=value, expected=expected)))
    state: str | None = None
    for _, operation in sorted(calls, key=lambda c: c[0]):
        state, operation.result = step(state, operation)
    return [operation for _, operation in calls]


# ---------------------------------------------------------------------------------------------
# Known-bad histories


def test_stale_read_is_rejected() -> None:
    # The write completed before the read began, and the read did not see it.
    assert not is_linearizable([put("1", 0, 1), get(None, 2, 3)])
    assert not is_linearizable([put("1", 0, 1), put("2", 2, 3), get("1", 4, 5)])


def test_lost_write_is_rejected() -> None:
    # Two acknowledged writes, and the value ends as if the second never happened.
    history = [put("1", 0, 1), put("2", 2, 3), get("1", 4, 5)]
    assert not is_linearizable(history)
    # An acknowledged write that no later read sees, though nothing overwrote it.
    assert not is_linearizable([put("0", 0, 1), cas("0", "1", True, 2, 3), get("0", 4, 5)])


def test_cas_applied_twice_is_rejected() -> None:
    # Two compare-and-sets from the same value both report success.
    assert not is_linearizable(
        [put("0", 0, 1), cas("0", "1", True, 2, 5), cas("0", "1", True, 3, 6)]
    )
    # One compare-and-set applied again after a later write restored the expected value.
    assert not is_linearizable(
        [put("0", 0, 1), cas("0", "1", True, 2, 3), put("0", 4, 5), get("1", 6, 7)]
    )


def test_read_of_a_value_never_written_is_rejected() -> None:
    assert not is_linearizable([put("1", 0, 1), get("7", 2, 3)])


def test_corrupted_random_histories_are_rejected() -> None:
    """Changing one read's result to a value never written makes a history non-linearizable."""
    rng = random.Random(11)
    for _ in range(100):
        history = random_linearizable_history(rng, operations=10)
        history.append(get("never-written", 20, 21))
        assert check(history) == ["x"]
