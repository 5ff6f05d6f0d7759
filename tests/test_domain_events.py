"""Tests for eventsourcing.domain: errors, time, events, mutation and snapshots.

API.md sections 3.1 to 3.4 and 3.9. Aggregates are tested in test_domain_aggregates.py and
the @event decorator in test_domain_decorators.py.
"""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args, get_origin
from uuid import UUID, uuid4

import pytest
from domain_helpers import field_names

import eventsourcing.domain as domain
from eventsourcing.domain import (
    TZINFO,
    AbstractDecision,
    Aggregate,
    AggregateCreated,
    AggregateEvent,
    BaseAggregate,
    CanCreateTimestamp,
    CanInitAggregate,
    CanMutateAggregate,
    CanSnapshotAggregate,
    CollectEventsProtocol,
    DomainEvent,
    DomainEventProtocol,
    EventSourcingError,
    EventsourcingType,
    HasOriginatorIDVersion,
    LogEvent,
    MetaDomainEvent,
    OriginatorIDError,
    OriginatorVersionError,
    ProgrammingError,
    Snapshot,
    create_utc_datetime_now,
    datetime_now_with_tzinfo,
    event,
    filter_kwargs_for_method_params,
)
from eventsourcing.utils import get_topic


def now() -> datetime:
    return datetime_now_with_tzinfo()


# ---------------------------------------------------------------------------------------
# 3.1 Exceptions


def test_exception_hierarchy() -> None:
    assert issubclass(EventSourcingError, Exception)
    assert issubclass(ProgrammingError, EventSourcingError)
    assert issubclass(OriginatorIDError, EventSourcingError)
    assert issubclass(OriginatorVersionError, EventSourcingError)
    assert not issubclass(OriginatorIDError, ProgrammingError)


def test_domain_programming_error_is_not_the_persistence_one() -> None:
    persistence = pytest.importorskip("eventsourcing.persistence")
    assert persistence.ProgrammingError is not ProgrammingError


# ---------------------------------------------------------------------------------------
# 3.2 Time


def test_tzinfo_defaults_to_utc() -> None:
    assert TZINFO is UTC
    assert domain.TZINFO is UTC


def test_tzinfo_is_read_from_environment_at_import(tmp_path: Path) -> None:
    (tmp_path / "es_test_tz.py").write_text(
        "from datetime import timedelta, timezone\nFIVE = timezone(timedelta(hours=5))\n"
    )
    code = (
        "import eventsourcing.domain as d\n"
        "print(d.TZINFO.utcoffset(None).total_seconds())\n"
        "print(d.datetime_now_with_tzinfo().utcoffset().total_seconds())\n"
        "print(d.Aggregate().created_on.utcoffset().total_seconds())\n"
    )
    env = {"TZINFO_TOPIC": "es_test_tz:FIVE", "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["18000.0", "18000.0", "18000.0"]


def test_datetime_now_with_tzinfo_is_aware_and_current() -> None:
    before = datetime.now(UTC)
    value = datetime_now_with_tzinfo()
    after = datetime.now(UTC)
    assert value.tzinfo is TZINFO
    assert before <= value <= after


def test_create_utc_datetime_now_is_deprecated() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = create_utc_datetime_now()
    assert [w.category for w in caught] == [DeprecationWarning]
    assert value.tzinfo is not None


def test_can_create_timestamp() -> None:
    before = datetime_now_with_tzinfo()
    value = CanCreateTimestamp.create_timestamp()
    assert before <= value <= datetime_now_with_tzinfo()
    assert value.tzinfo is TZINFO
    assert AggregateEvent.create_timestamp().tzinfo is TZINFO


# ---------------------------------------------------------------------------------------
# 3.3 Protocols and machinery


def test_protocols_are_runtime_checkable() -> None:
    ev = Aggregate.Event(originator_id=uuid4(), originator_version=1, timestamp=now())
    assert isinstance(ev, DomainEventProtocol)
    assert isinstance(Aggregate(), CollectEventsProtocol)
    assert not isinstance(object(), DomainEventProtocol)


def test_metaclasses() -> None:
    assert issubclass(MetaDomainEvent, EventsourcingType)
    assert isinstance(DomainEvent, MetaDomainEvent)
    assert isinstance(Aggregate, EventsourcingType)
    assert issubclass(domain.MetaAggregate, EventsourcingType)
    assert issubclass(CanMutateAggregate, AbstractDecision)


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (AggregateEvent, UUID),
        (AggregateCreated, UUID),
        (Aggregate.Event, UUID),
        (Snapshot, UUID),
        (HasOriginatorIDVersion, None),
        (CanMutateAggregate, None),
    ],
)
def test_originator_id_type_of_library_classes(cls: Any, expected: type | None) -> None:
    assert cls.originator_id_type is expected


def test_originator_id_type_from_generic_argument() -> None:
    class StrEvent(CanMutateAggregate[str]):
        pass

    class UUIDEvent(CanMutateAggregate[UUID]):
        pass

    class Sub(UUIDEvent):
        pass

    class StrSnapshot(CanSnapshotAggregate[str]):
        pass

    class StrCreated(CanInitAggregate[str]):
        pass

    class AnyEvent(CanMutateAggregate[Any]):
        pass

    assert StrEvent.originator_id_type is str
    assert UUIDEvent.originator_id_type is UUID
    assert Sub.originator_id_type is UUID
    assert StrSnapshot.originator_id_type is str
    assert StrCreated.originator_id_type is str
    assert AnyEvent.originator_id_type is None


def test_originator_id_type_declared_in_class_body_is_kept() -> None:
    class Declared(CanMutateAggregate[UUID]):
        originator_id_type = str  # type: ignore[assignment]

    assert Declared.originator_id_type is str


def test_originator_id_type_rejects_other_type_arguments() -> None:
    with pytest.raises(TypeError) as cm:

        class IntEvent(CanMutateAggregate[int]):  # type: ignore[type-var]
            pass

    assert str(cm.value) == "Aggregate ID type arg cannot be <class 'int'>"


def test_filter_kwargs_for_method_params() -> None:
    def method(self: object, a: int, b: int = 0) -> None:
        pass

    assert filter_kwargs_for_method_params({"a": 1, "c": 2, "b": 3}, method) == {"a": 1, "b": 3}
    assert filter_kwargs_for_method_params({}, method) == {}


# ---------------------------------------------------------------------------------------
# 3.4 Concrete event classes


def test_domain_event_fields_in_order() -> None:
    assert field_names(DomainEvent) == ["originator_id", "originator_version", "timestamp"]
    assert field_names(AggregateEvent) == ["originator_id", "originator_version", "timestamp"]
    assert field_names(AggregateCreated) == [
        "originator_id",
        "originator_version",
        "timestamp",
        "originator_topic",
    ]
    assert field_names(Snapshot) == [
        "originator_id",
        "originator_version",
        "timestamp",
        "topic",
        "state",
    ]


def test_domain_event_positional_construction_follows_field_order() -> None:
    oid, ts = uuid4(), now()
    ev = DomainEvent(oid, 3, ts)  # type: ignore[call-arg]
    assert (ev.originator_id, ev.originator_version, ev.timestamp) == (oid, 3, ts)


def test_domain_event_is_frozen() -> None:
    ev = DomainEvent(originator_id=uuid4(), originator_version=1, timestamp=now())
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.originator_version = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.extra = 1  # type: ignore[attr-defined]


def test_domain_event_equality_is_dataclass_equality() -> None:
    oid, ts = uuid4(), now()
    a = Aggregate.Event(originator_id=oid, originator_version=1, timestamp=ts)
    b = Aggregate.Event(originator_id=oid, originator_version=1, timestamp=ts)
    c = Aggregate.Event(originator_id=oid, originator_version=2, timestamp=ts)
    assert a == b
    assert hash(a) == hash(b)
    assert a != c


def test_domain_event_rejects_non_uuid_originator_id() -> None:
    with pytest.raises(TypeError) as cm:
        DomainEvent(originator_id="x", originator_version=1, timestamp=now())  # type: ignore[arg-type]
    assert str(cm.value) == (
        "<class 'eventsourcing.domain.DomainEvent'> was initialized with a non-UUID "
        "originator_id: 'x'"
    )


def test_subclass_rejects_non_uuid_originator_id() -> None:
    with pytest.raises(TypeError) as cm:
        Aggregate.Event(originator_id=1, originator_version=1, timestamp=now())  # type: ignore[arg-type]
    assert str(cm.value) == (
        "<class 'eventsourcing.domain.Aggregate.Event'> was initialized with a non-UUID "
        "originator_id: 1"
    )


def test_uuid_subclass_is_accepted_as_originator_id() -> None:
    class MyUUID(UUID):
        pass

    oid = MyUUID(int=5)
    ev = DomainEvent(originator_id=oid, originator_version=1, timestamp=now())
    assert ev.originator_id is oid


def test_subclass_fields_from_annotations_without_decorator() -> None:
    class Happened(AggregateEvent):
        what: str
        count: int = 0

    ev = Happened(originator_id=uuid4(), originator_version=1, timestamp=now(), what="x")
    assert field_names(Happened)[-2:] == ["what", "count"]
    assert (ev.what, ev.count) == ("x", 0)
    assert dataclasses.is_dataclass(Happened)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.what = "y"  # type: ignore[misc]


def test_event_signature_is_set_from_generated_init() -> None:
    class Happened(AggregateEvent):
        what: str

    # As in 9.x, the class's __signature__ is the one of the generated __init__.
    expected = ["self", "originator_id", "originator_version", "timestamp", "what"]
    assert list(inspect.signature(Happened).parameters) == expected
    assert list(inspect.signature(Happened.__init__).parameters) == expected


def test_event_fields_with_any_names() -> None:
    class Measured(AggregateEvent):
        d: int
        self: int = 7

    ev = Measured(originator_id=uuid4(), originator_version=1, timestamp=now(), d=5)
    assert (ev.d, ev.self) == (5, 7)


def test_event_fields_with_default_factory_and_init_false() -> None:
    class Listed(AggregateEvent):
        items: list[int] = field(default_factory=list)
        fixed: int = field(default=3, init=False)

    ev = Listed(originator_id=uuid4(), originator_version=1, timestamp=now())
    assert ev.items == []
    assert ev.fixed == 3


def test_event_post_init_of_subclass_runs() -> None:
    calls: list[int] = []

    class Checked(AggregateEvent):
        value: int

        def __post_init__(self) -> None:
            calls.append(self.value)
            super().__post_init__()

    Checked(originator_id=uuid4(), originator_version=1, timestamp=now(), value=4)
    assert calls == [4]
    with pytest.raises(TypeError, match="non-UUID originator_id"):
        Checked(originator_id="x", originator_version=1, timestamp=now(), value=5)  # type: ignore[arg-type]
    assert calls == [4, 5]


def test_event_construction_errors_name_the_init() -> None:
    with pytest.raises(TypeError) as cm:
        Aggregate.Event(originator_id=uuid4(), originator_version=1, timestamp=now(), foo=1)  # type: ignore[call-arg]
    assert str(cm.value) == "Aggregate.Event.__init__() got an unexpected keyword argument 'foo'"
    with pytest.raises(TypeError) as cm:
        Aggregate.Event(originator_id=uuid4(), originator_version=1)  # type: ignore[call-arg]
    assert "missing 1 required positional argument: 'timestamp'" in str(cm.value)


def test_dataclass_decorator_on_event_is_harmless() -> None:
    @dataclass(frozen=True)
    class Frozen(AggregateEvent):
        a: int

    @dataclass
    class NotFrozenRequested(AggregateEvent):
        b: int = 2

    ev = Frozen(originator_id=uuid4(), originator_version=1, timestamp=now(), a=1)
    assert field_names(Frozen)[-1] == "a"
    assert ev.a == 1
    other = NotFrozenRequested(originator_id=uuid4(), originator_version=1, timestamp=now())
    assert other.b == 2
    # Still frozen: a second decoration does not undo the first.
    with pytest.raises(dataclasses.FrozenInstanceError):
        other.b = 3  # type: ignore[misc]


def test_dataclass_twice_on_aggregate_keeps_defaults_and_non_init_fields() -> None:
    @dataclass
    class Account(Aggregate):
        owner: str
        tags: list[str] = field(default_factory=list)
        level: int = field(default=3, init=False)

    account = Account("alice")
    assert (account.owner, account.tags, account.level) == ("alice", [], 3)
    assert list(inspect.signature(Account.__init__).parameters) == ["self", "owner", "tags"]


def test_log_event_is_a_domain_event() -> None:
    assert issubclass(LogEvent, DomainEvent)
    ev = LogEvent(originator_id=uuid4(), originator_version=1, timestamp=now())
    assert ev.originator_version == 1


def test_aggregate_event_classes_bases() -> None:
    assert issubclass(AggregateEvent, CanMutateAggregate)
    assert issubclass(AggregateEvent, DomainEvent)
    assert issubclass(AggregateCreated, CanInitAggregate)
    assert issubclass(AggregateCreated, AggregateEvent)
    assert issubclass(Snapshot, CanSnapshotAggregate)
    assert issubclass(Snapshot, DomainEvent)


# ---------------------------------------------------------------------------------------
# CanMutateAggregate.mutate


class Counter(Aggregate):
    """Counts how often its events were applied, and records when."""

    def __init__(self) -> None:
        self.applied: list[int] = []

    class Counted(Aggregate.Event):
        def apply(self, aggregate: Any) -> None:
            # The version is not yet advanced when apply() runs.
            aggregate.applied.append(aggregate.version)

    class Failed(Aggregate.Event):
        def apply(self, aggregate: Any) -> None:
            raise ValueError("failed")


def next_event(agg: Any, cls: Any = Counter.Counted, **kwargs: Any) -> Any:
    values = {"originator_id": agg.id, "originator_version": agg.version + 1, "timestamp": now()}
    values.update(kwargs)
    return cls(**values)


def test_mutate_applies_then_advances_version_and_modified_on() -> None:
    counter = Counter()
    ev = next_event(counter)
    assert ev.mutate(counter) is counter
    assert counter.applied == [1]
    assert counter.version == 2
    assert counter.modified_on == ev.timestamp
    assert counter.created_on != ev.timestamp


def test_mutate_accepts_an_equal_id_object() -> None:
    counter = Counter()
    ev = next_event(counter, originator_id=UUID(str(counter.id)))
    ev.mutate(counter)
    assert counter.version == 2


def test_mutate_rejects_other_originator_id() -> None:
    counter = Counter()
    ev = next_event(counter, originator_id=uuid4())
    with pytest.raises(OriginatorIDError) as cm:
        ev.mutate(counter)
    assert cm.value.args == (ev.originator_id, counter.id)
    assert counter.version == 1
    assert counter.applied == []


@pytest.mark.parametrize("version", [1, 3, 0])
def test_mutate_rejects_wrong_originator_version(version: int) -> None:
    counter = Counter()
    ev = next_event(counter, originator_version=version)
    with pytest.raises(OriginatorVersionError) as cm:
        ev.mutate(counter)
    assert cm.value.args == (version, 2)
    assert counter.version == 1
    assert counter.applied == []


def test_mutate_leaves_version_and_modified_on_when_apply_raises() -> None:
    counter = Counter()
    modified_on = counter.modified_on
    with pytest.raises(ValueError):
        next_event(counter, Counter.Failed).mutate(counter)
    assert counter.version == 1
    assert counter.modified_on == modified_on


def test_apply_does_nothing_by_default() -> None:
    agg = Aggregate()
    before = dict(agg.__dict__)
    ev = next_event(agg, Aggregate.Event)
    assert ev.apply(agg) is None
    assert agg.__dict__ == before


def test_mutate_works_with_any_mutable_aggregate() -> None:
    class Plain:
        def __init__(self) -> None:
            self.id = uuid4()
            self.version = 4
            self.modified_on = now()

    plain = Plain()
    ev = Aggregate.Event(originator_id=plain.id, originator_version=5, timestamp=now())
    assert ev.mutate(plain) is plain
    assert plain.version == 5
    assert plain.modified_on == ev.timestamp
    with pytest.raises(OriginatorVersionError):
        ev.mutate(plain)


def test_mutate_of_any_mutable_aggregate_checks_the_id() -> None:
    class Plain:
        def __init__(self) -> None:
            self.id = uuid4()
            self.version = 1
            self.modified_on = now()

    plain = Plain()
    ev = Aggregate.Event(originator_id=uuid4(), originator_version=2, timestamp=now())
    with pytest.raises(OriginatorIDError) as cm:
        ev.mutate(plain)
    assert cm.value.args == (ev.originator_id, plain.id)
    assert plain.version == 1


# ---------------------------------------------------------------------------------------
# CanInitAggregate.mutate


CONSTRUCTION_CALLS: list[str] = []


class Registered(Aggregate):
    """Records how it was constructed, in CONSTRUCTION_CALLS."""

    def __base_init__(self, originator_id: Any, originator_version: int, timestamp: Any) -> None:
        CONSTRUCTION_CALLS.append("base_init")
        super().__base_init__(originator_id, originator_version, timestamp)

    def __init__(self, name: str, id: UUID) -> None:
        CONSTRUCTION_CALLS.append("init")
        self.name = name
        self.given_id = id

    class Created(Aggregate.Created):
        name: str

        def apply(self, aggregate: Any) -> None:
            CONSTRUCTION_CALLS.append("apply")


def test_created_event_mutate_constructs_the_aggregate_without_calling_the_class() -> None:
    CONSTRUCTION_CALLS.clear()
    oid, ts = uuid4(), now()
    created = Registered.Created(
        originator_id=oid,
        originator_version=1,
        timestamp=ts,
        originator_topic=get_topic(Registered),
        name="fido",
    )
    agg = created.mutate(None)
    assert type(agg) is Registered
    assert CONSTRUCTION_CALLS == ["base_init", "init", "apply"]
    assert agg.name == "fido"
    assert agg.given_id == oid  # __init__ has an 'id' parameter: it gets the id
    assert (agg.id, agg.version, agg.created_on, agg.modified_on) == (oid, 1, ts, ts)
    assert agg.pending_events == []
    assert agg.__dict__["_pending_events"] == []


def test_created_event_passes_only_init_parameters() -> None:
    class Pet(Aggregate):
        def __init__(self, name: str) -> None:
            self.name = name

        class Born(AggregateCreated):
            name: str
            weight: int

    agg = Pet._create(Pet.Born, name="rex", weight=3)
    assert agg.name == "rex"
    assert not hasattr(agg, "weight")


# ---------------------------------------------------------------------------------------
# Snapshots (3.4) and upcasting of aggregate state (3.9)


class Tracked(Aggregate):
    """An aggregate whose __init__ must not run when a snapshot is restored."""

    def __init__(self, x: int) -> None:
        self.x = x
        self.items = [1]

    @event("Bumped")
    def bump(self) -> None:
        self.x += 1


def test_aggregate_snapshot_is_domain_snapshot() -> None:
    assert Aggregate.Snapshot is Snapshot


def test_snapshot_take() -> None:
    agg = Tracked(1)
    agg.bump()
    before = datetime_now_with_tzinfo()
    snapshot = Snapshot.take(agg)
    assert type(snapshot) is Snapshot
    assert snapshot.originator_id == agg.id
    assert snapshot.originator_version == 2
    assert before <= snapshot.timestamp <= datetime_now_with_tzinfo()
    assert snapshot.topic == get_topic(Tracked)
    assert snapshot.state == {
        "_created_on": agg.created_on,
        "_modified_on": agg.modified_on,
        "x": 2,
        "items": [1],
    }
    # The state is a copy of the aggregate's __dict__.
    agg.y = 1  # type: ignore[attr-defined]
    assert "y" not in snapshot.state


def test_snapshot_mutate_restores_without_init() -> None:
    agg = Tracked(1)
    agg.bump()
    snapshot = Tracked.Snapshot.take(agg)
    state_before = dict(snapshot.state)
    restored = snapshot.mutate(None)
    assert type(restored) is Tracked
    assert (restored.id, restored.version, restored.x) == (agg.id, 2, 2)
    assert restored.created_on == agg.created_on
    assert restored.modified_on == agg.modified_on
    assert restored.pending_events == []
    agg.collect_events()
    assert restored == agg
    assert snapshot.state == state_before  # the snapshot's own state is not changed


def test_snapshot_of_restored_aggregate_continues() -> None:
    agg = Tracked(1)
    restored = Snapshot.take(agg).mutate(None)
    restored.bump()
    assert restored.version == 2
    assert restored.x == 2


def test_snapshot_of_plain_object_keeps_all_attributes() -> None:
    class Plain:
        def __init__(self) -> None:
            self.id = uuid4()
            self.version = 3
            self._x = 1

    plain = Plain()
    snapshot = Snapshot.take(plain)
    assert snapshot.state == {"id": plain.id, "version": 3, "_x": 1}
    assert snapshot.originator_version == 3


class Versioned(Aggregate):
    """Version 3 of its state: version 1 had only 'a', version 2 added 'b', 3 added 'c'."""

    class_version = 3

    def __init__(self) -> None:
        self.a = 1
        self.b = 2
        self.c = 3

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        state["b"] = 20

    @staticmethod
    def upcast_v2_v3(state: dict[str, Any]) -> None:
        state["c"] = state["b"] + 1


def old_snapshot(agg: Versioned, state: dict[str, Any]) -> Snapshot:
    full = {"_created_on": agg.created_on, "_modified_on": agg.modified_on, **state}
    return Snapshot(
        originator_id=agg.id,
        originator_version=agg.version,
        timestamp=now(),
        topic=get_topic(Versioned),
        state=full,
    )


def test_snapshot_take_records_class_version_above_one() -> None:
    assert Snapshot.take(Versioned()).state["class_version"] == 3
    assert "class_version" not in Snapshot.take(Tracked(1)).state


def test_snapshot_mutate_upcasts_from_version_one() -> None:
    agg = Versioned()
    restored = old_snapshot(agg, {"a": 0}).mutate(None)
    assert (restored.a, restored.b, restored.c) == (0, 20, 21)
    assert "class_version" not in restored.__dict__


def test_snapshot_mutate_upcasts_from_recorded_version() -> None:
    agg = Versioned()
    restored = old_snapshot(agg, {"a": 0, "b": 5, "class_version": 2}).mutate(None)
    assert (restored.a, restored.b, restored.c) == (0, 5, 6)


def test_snapshot_mutate_current_version_is_not_upcast() -> None:
    agg = Versioned()
    restored = Snapshot.take(agg).mutate(None)
    assert (restored.a, restored.b, restored.c) == (1, 2, 3)
    assert "class_version" not in restored.__dict__


def test_event_class_version_declarations_are_not_fields() -> None:
    class Renamed(Aggregate.Event):
        class_version = 2
        name: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["name"] = "unknown"

    assert Renamed.class_version == 2
    assert field_names(Renamed)[-1] == "name"
    state: dict[str, Any] = {}
    Renamed.upcast_v1_v2(state)
    assert state == {"name": "unknown"}


def test_base_aggregate_is_generic() -> None:
    assert get_origin(BaseAggregate[UUID]) is BaseAggregate
    assert get_args(BaseAggregate[str]) == (str,)
    assert issubclass(Aggregate, BaseAggregate)
