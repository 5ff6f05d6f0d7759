"""Tests for eventsourcing.utils: topics, retry, strtobool and Environment (API.md section 1)."""

from __future__ import annotations

import sys
import threading
import time
import types
from collections.abc import Iterator

import pytest

import eventsourcing
import eventsourcing.domain
import eventsourcing.utils
from eventsourcing.domain import Aggregate
from eventsourcing.utils import (
    Environment,
    TopicError,
    clear_topic_cache,
    construct_topic,
    get_method_name,
    get_topic,
    register_topic,
    resolve_topic,
    retry,
    reversed_keys,
    strtobool,
)


@pytest.fixture
def throwaway_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """An importable module, ``es_throwaway_topics``, holding a class with a nested class."""
    module = types.ModuleType("es_throwaway_topics")

    class Thing:
        class Inner:
            pass

    Thing.__module__ = Thing.Inner.__module__ = module.__name__
    Thing.__qualname__ = "Thing"
    Thing.Inner.__qualname__ = "Thing.Inner"
    module.Thing = Thing  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    yield module


def module_level_function() -> None:
    """A function whose topic the tests compute."""


# ---------------------------------------------------------------------------------------
# get_topic and construct_topic


def test_get_topic_of_class_is_module_and_qualname() -> None:
    assert get_topic(Aggregate) == "eventsourcing.domain:Aggregate"
    assert get_topic(Aggregate.Created) == "eventsourcing.domain:Aggregate.Created"


def test_get_topic_of_function() -> None:
    assert get_topic(module_level_function) == f"{__name__}:module_level_function"
    assert get_topic(len) == "builtins:len"


def test_get_topic_of_module_is_its_name() -> None:
    assert get_topic(eventsourcing.domain) == "eventsourcing.domain"


def test_get_topic_uses_explicit_topic_attribute() -> None:
    class Explicit:
        TOPIC = "my-explicit-topic"

    assert get_topic(Explicit) == "my-explicit-topic"
    assert construct_topic(Explicit) == "my-explicit-topic"


def test_get_topic_registers_the_object_so_the_topic_resolves_back() -> None:
    class Local:
        pass

    # A class defined in a function cannot be found by importing its module...
    topic = get_topic(Local)
    assert topic == f"{__name__}:{Local.__qualname__}"
    # ...but get_topic() registered it, so it resolves straight back.
    assert resolve_topic(topic) is Local


def test_get_topic_is_cached_but_construct_topic_is_not() -> None:
    class Renamable:
        pass

    first = get_topic(Renamable)
    Renamable.__qualname__ = "Renamed"
    assert get_topic(Renamable) == first
    assert construct_topic(Renamable) == f"{__name__}:Renamed"


def test_construct_topic_does_not_register(throwaway_module: types.ModuleType) -> None:
    thing = throwaway_module.Thing
    topic = construct_topic(thing)
    assert topic == "es_throwaway_topics:Thing"
    # Not registered: registering a different object under the topic is still allowed.
    register_topic(topic, int)
    assert resolve_topic(topic) is int


# ---------------------------------------------------------------------------------------
# resolve_topic


def test_resolve_topic_of_class_nested_class_and_module() -> None:
    assert resolve_topic("eventsourcing.domain:Aggregate") is Aggregate
    assert resolve_topic("eventsourcing.domain:Aggregate.Created") is Aggregate.Created
    assert resolve_topic("eventsourcing.domain") is eventsourcing.domain
    assert resolve_topic("eventsourcing") is eventsourcing
    assert resolve_topic("datetime:timezone.utc") is __import__("datetime").timezone.utc


def test_resolve_topic_caches_the_result(throwaway_module: types.ModuleType) -> None:
    thing = resolve_topic("es_throwaway_topics:Thing")
    assert thing is throwaway_module.Thing
    del throwaway_module.Thing
    # Still resolves: the first resolution was cached.
    assert resolve_topic("es_throwaway_topics:Thing") is thing
    clear_topic_cache()
    with pytest.raises(TopicError):
        resolve_topic("es_throwaway_topics:Thing")


def test_resolve_topic_missing_module_message() -> None:
    with pytest.raises(TopicError) as cm:
        resolve_topic("oldmodule:Aggregate")
    assert str(cm.value) == (
        "Failed to resolve topic 'oldmodule:Aggregate': No module named 'oldmodule'"
    )


def test_resolve_topic_missing_attribute_message() -> None:
    with pytest.raises(TopicError) as cm:
        resolve_topic("eventsourcing.domain:OldClass")
    assert str(cm.value) == (
        "Failed to resolve topic 'eventsourcing.domain:OldClass': "
        "module 'eventsourcing.domain' has no attribute 'OldClass'"
    )


def test_resolve_topic_missing_nested_attribute_and_submodule() -> None:
    with pytest.raises(TopicError) as cm:
        resolve_topic("eventsourcing.domain:Aggregate.Nope")
    assert str(cm.value) == (
        "Failed to resolve topic 'eventsourcing.domain:Aggregate.Nope': "
        "type object 'Aggregate' has no attribute 'Nope'"
    )
    with pytest.raises(TopicError) as cm:
        resolve_topic("eventsourcing.nope:X")
    assert str(cm.value) == (
        "Failed to resolve topic 'eventsourcing.nope:X': No module named 'eventsourcing.nope'"
    )


def test_topic_error_is_an_exception() -> None:
    assert issubclass(TopicError, Exception)


# ---------------------------------------------------------------------------------------
# register_topic: renamed classes, moved modules, renamed packages


def test_register_topic_for_renamed_class() -> None:
    class NewClass(Aggregate):
        pass

    register_topic("mymodule:OldClass", NewClass)
    assert resolve_topic("mymodule:OldClass") is NewClass
    # Nested classes of the renamed class resolve through the registered prefix.
    assert resolve_topic("mymodule:OldClass.Created") is NewClass.Created
    assert resolve_topic("mymodule:OldClass.Event") is NewClass.Event


def test_register_topic_for_moved_module() -> None:
    register_topic("oldmodule", eventsourcing.domain)
    assert resolve_topic("oldmodule") is eventsourcing.domain
    assert resolve_topic("oldmodule:Aggregate") is Aggregate
    assert resolve_topic("oldmodule:Aggregate.Created") is Aggregate.Created


def test_register_topic_for_renamed_package() -> None:
    register_topic("oldpackage", eventsourcing)
    assert resolve_topic("oldpackage.domain:Aggregate") is Aggregate
    assert resolve_topic("oldpackage.domain") is eventsourcing.domain
    assert resolve_topic("oldpackage.utils:get_topic") is get_topic


def test_register_topic_for_module_moved_into_package() -> None:
    register_topic("old.eventsourcing.domain", eventsourcing.domain)
    register_topic("old.old", eventsourcing.domain)
    assert resolve_topic("old.eventsourcing.domain:Aggregate") is Aggregate
    assert resolve_topic("old.old:Aggregate.Created") is Aggregate.Created


def test_register_topic_prefix_failures_raise_topic_error() -> None:
    register_topic("oldpackage", eventsourcing)
    with pytest.raises(TopicError) as cm:
        resolve_topic("oldpackage.nope:Aggregate")
    assert str(cm.value) == (
        "Failed to resolve topic 'oldpackage.nope:Aggregate': No module named 'eventsourcing.nope'"
    )
    with pytest.raises(TopicError) as cm:
        resolve_topic("oldpackage.domain:Nope")
    assert str(cm.value) == (
        "Failed to resolve topic 'oldpackage.domain:Nope': "
        "module 'eventsourcing.domain' has no attribute 'Nope'"
    )


def test_register_same_object_twice_is_harmless() -> None:
    register_topic("some:topic", Aggregate)
    register_topic("some:topic", Aggregate)
    assert resolve_topic("some:topic") is Aggregate


def test_register_different_object_under_taken_topic_raises() -> None:
    register_topic("some:topic", Aggregate)
    with pytest.raises(TopicError) as cm:
        register_topic("some:topic", int)
    assert "is already registered for topic 'some:topic'" in str(cm.value)
    assert resolve_topic("some:topic") is Aggregate


def test_register_topic_conflicts_with_topic_registered_by_get_topic() -> None:
    class Original:
        pass

    topic = get_topic(Original)
    with pytest.raises(TopicError):
        register_topic(topic, int)


def test_register_topic_is_thread_safe() -> None:
    # Many threads race to register different objects under one topic: exactly one wins.
    objects = [type(f"C{i}", (), {}) for i in range(8)]
    barrier = threading.Barrier(len(objects))
    errors: list[Exception] = []

    def register(obj: type) -> None:
        barrier.wait()
        try:
            register_topic("contested:topic", obj)
        except TopicError as e:
            errors.append(e)

    threads = [threading.Thread(target=register, args=(o,)) for o in objects]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == len(objects) - 1
    assert resolve_topic("contested:topic") in objects


def test_clear_topic_cache_forgets_registrations() -> None:
    register_topic("mymodule:OldClass", Aggregate)
    assert resolve_topic("mymodule:OldClass") is Aggregate
    clear_topic_cache()
    with pytest.raises(TopicError):
        resolve_topic("mymodule:OldClass")
    # After clearing, the topic may be given to another object.
    register_topic("mymodule:OldClass", int)
    assert resolve_topic("mymodule:OldClass") is int


# ---------------------------------------------------------------------------------------
# retry


class Flaky:
    """Fails with ``exc`` for the first ``failures`` calls, then returns the call count."""

    def __init__(self, failures: int, exc: type[Exception] = ValueError) -> None:
        self.failures = failures
        self.exc = exc
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc(self.calls)
        return self.calls


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the durations passed to ``time.sleep`` instead of sleeping."""
    recorded: list[float] = []
    monkeypatch.setattr(time, "sleep", recorded.append)
    if hasattr(eventsourcing.utils, "sleep"):  # in case it was imported by name
        monkeypatch.setattr(eventsourcing.utils, "sleep", recorded.append)
    return recorded


def test_retry_bare_makes_one_attempt() -> None:
    flaky = Flaky(failures=1)

    @retry
    def call() -> int:
        return flaky()

    with pytest.raises(ValueError):
        call()
    assert flaky.calls == 1
    assert call() == 2


def test_retry_keeps_function_metadata() -> None:
    @retry(ValueError, max_attempts=2)
    def documented() -> None:
        """Docstring."""

    assert documented.__name__ == "documented"
    assert documented.__doc__ == "Docstring."


def test_retry_until_success(sleeps: list[float]) -> None:
    flaky = Flaky(failures=2)
    assert retry(ValueError, max_attempts=3)(flaky)() == 3
    assert flaky.calls == 3


def test_retry_gives_up_after_max_attempts_and_reraises_last(sleeps: list[float]) -> None:
    flaky = Flaky(failures=10)
    with pytest.raises(ValueError) as cm:
        retry(ValueError, max_attempts=4)(flaky)()
    assert flaky.calls == 4
    assert cm.value.args == (4,)


def test_retry_non_matching_exception_propagates_at_once(sleeps: list[float]) -> None:
    flaky = Flaky(failures=10, exc=KeyError)
    with pytest.raises(KeyError):
        retry(ValueError, max_attempts=5)(flaky)()
    assert flaky.calls == 1


@pytest.mark.parametrize("exc", [(KeyError, ValueError), [KeyError, ValueError]])
def test_retry_accepts_tuple_or_list_of_exceptions(exc: object, sleeps: list[float]) -> None:
    flaky = Flaky(failures=2)
    assert retry(exc, max_attempts=3)(flaky)() == 3  # type: ignore[call-overload]


def test_retry_matches_subclasses(sleeps: list[float]) -> None:
    flaky = Flaky(failures=1, exc=KeyError)
    assert retry(LookupError, max_attempts=2)(flaky)() == 2


def test_retry_waits_with_jitter_between_attempts(sleeps: list[float]) -> None:
    flaky = Flaky(failures=3)
    retry(ValueError, max_attempts=4, wait=2.0)(flaky)()
    waits = [s for s in sleeps if s]
    assert len(waits) == 3
    for w in waits:
        assert 1.9 <= w <= 2.1


def test_retry_stalls_once_before_first_call(sleeps: list[float]) -> None:
    flaky = Flaky(failures=0)
    retry(ValueError, stall=3)(flaky)()
    assert [s for s in sleeps if s] == [3]


def test_retry_sleeps_for_real() -> None:
    flaky = Flaky(failures=2)
    started = time.monotonic()
    retry(ValueError, max_attempts=3, wait=0.02, stall=0.02)(flaky)()
    # One stall and two waits, each at least 95% of the requested time.
    assert time.monotonic() - started >= 0.05


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"exc": 1}, "not an exception class: 1"),
        ({"exc": "ValueError"}, "not an exception class: ValueError"),
        ({"exc": [ValueError, 1]}, "not an exception class: 1"),
        ({"exc": (ValueError, str)}, "not an exception class: <class 'str'>"),
        ({"max_attempts": 1.0}, None),
        ({"max_attempts": "1"}, None),
        ({"wait": "1"}, None),
        ({"stall": None}, None),
    ],
)
def test_retry_rejects_bad_arguments(kwargs: dict[str, object], message: str | None) -> None:
    with pytest.raises(TypeError) as cm:
        retry(**kwargs)  # type: ignore[call-overload]
    if message is not None:
        assert str(cm.value) == message


def test_retry_accepts_int_and_float_wait_and_stall() -> None:
    assert callable(retry(wait=1, stall=0.5))
    assert callable(retry(wait=0.5, stall=1))


# ---------------------------------------------------------------------------------------
# strtobool


@pytest.mark.parametrize("val", ["y", "yes", "t", "true", "on", "1", "YES", "True", "On", "Y"])
def test_strtobool_true_values(val: str) -> None:
    assert strtobool(val) is True


@pytest.mark.parametrize("val", ["n", "no", "f", "false", "off", "0", "NO", "False", "OFF"])
def test_strtobool_false_values(val: str) -> None:
    assert strtobool(val) is False


@pytest.mark.parametrize("val", ["", "x", "maybe", "2", "yes please", " 1"])
def test_strtobool_rejects_other_strings(val: str) -> None:
    with pytest.raises(ValueError) as cm:
        strtobool(val)
    assert str(cm.value) == f"invalid truth value {val.lower()!r}"


def test_strtobool_value_error_message() -> None:
    with pytest.raises(ValueError) as cm:
        strtobool("x")
    assert str(cm.value) == "invalid truth value 'x'"


@pytest.mark.parametrize("val", [None, True, False, 1, 0, b"yes"])
def test_strtobool_rejects_non_strings(val: object) -> None:
    with pytest.raises(TypeError):
        strtobool(val)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# Environment, reversed_keys, get_method_name


def test_environment_is_a_dict_with_a_name() -> None:
    env = Environment("myapp", {"X": "1"})
    assert isinstance(env, dict)
    assert env.name == "myapp"
    assert dict(env) == {"X": "1"}
    assert Environment().name == ""
    assert dict(Environment()) == {}


def test_environment_copies_the_given_mapping() -> None:
    given = {"X": "1"}
    env = Environment("app", given)
    env["Y"] = "2"
    assert given == {"X": "1"}


def test_environment_create_keys() -> None:
    assert Environment("myapp").create_keys("X") == ["MYAPP_X", "X"]
    assert Environment("MyApp").create_keys("KEY") == ["MYAPP_KEY", "KEY"]
    assert Environment().create_keys("X") == ["X"]


def test_environment_get_prefers_name_prefixed_key() -> None:
    env = Environment("myapp", {"MYAPP_X": "1", "X": "2", "Y": "3"})
    assert env.get("X") == "1"
    assert env.get("Y") == "3"
    assert env.get("Z") is None
    assert env.get("Z", "default") == "default"
    assert env.get("X", "default") == "1"


def test_environment_get_is_evaluated_on_each_call() -> None:
    env = Environment("myapp", {"MYAPP_X": "1", "X": "2"})
    env.name = "other"
    assert env.get("X") == "2"
    env["OTHER_X"] = "3"
    assert env.get("X") == "3"
    env.name = ""
    assert env.get("X") == "2"
    del env["X"]
    assert env.get("X") is None


def test_environment_item_access_is_not_prefixed() -> None:
    env = Environment("myapp", {"MYAPP_X": "1"})
    assert "X" not in env
    assert "MYAPP_X" in env
    with pytest.raises(KeyError):
        env["X"]
    assert env["MYAPP_X"] == "1"


def test_reversed_keys() -> None:
    assert list(reversed_keys({"a": 1, "b": 2, "c": 3})) == ["c", "b", "a"]
    assert list(reversed_keys({})) == []


def test_get_method_name_is_qualname() -> None:
    assert get_method_name(Flaky.__call__) == "Flaky.__call__"
    assert get_method_name(module_level_function) == "module_level_function"
