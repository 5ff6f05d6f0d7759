"""Application: configuration, save, snapshots, caching, notification log, event-sourced log.

Every behaviour is checked against POPO and against SQLite (a file database and a shared
in-memory database), and the shipped reusable test cases against PostgreSQL too.
Environment variables are set only through ``monkeypatch``.
"""

from __future__ import annotations

import gc
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID, uuid4

import pytest

from eventsourcing.application import (
    AggregateNotFoundError,
    Application,
    Cache,
    EventSourcedLog,
    LocalNotificationLog,
    LRUCache,
    ProcessingEvent,
    ProgrammingError,
    Section,
    project_aggregate,
)
from eventsourcing.domain import (
    Aggregate,
    BaseAggregate,
    CanInitAggregate,
    CanMutateAggregate,
    DomainEvent,
    MetaDomainEvent,
    Snapshot,
    event,
)
from eventsourcing.persistence import IntegrityError, JSONTranscoder, Recording, Tracking
from eventsourcing.tests import application as reusable
from eventsourcing.tests.application import BankAccounts
from eventsourcing.tests.domain import BankAccount
from runners.testing.postgres import PostgresDatabase

# Variables that would change what these tests construct if the caller's shell set them.
CONFIG_KEYS = (
    "PERSISTENCE_MODULE",
    "INFRASTRUCTURE_FACTORY",
    "FACTORY_TOPIC",
    "SQLITE_DBNAME",
    "IS_SNAPSHOTTING_ENABLED",
    "AGGREGATE_CACHE_MAXSIZE",
    "AGGREGATE_CACHE_FASTFORWARD",
    "AGGREGATE_CACHE_FASTFORWARD_SKIPPING",
    "DEEPCOPY_FROM_AGGREGATE_CACHE",
    "CIPHER_KEY",
    "CIPHER_TOPIC",
    "COMPRESSOR_TOPIC",
)


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test without persistence settings in os.environ."""
    for key in CONFIG_KEYS:
        monkeypatch.delenv(key, raising=False)


def sqlite_memory_uri() -> str:
    """A shared in-memory SQLite database that no other test uses."""
    return f"file:{uuid4().hex}?mode=memory&cache=shared"


BACKENDS = ["popo", "sqlite_file", "sqlite_memory"]


def backend_env(backend: str, tmp_path: Path) -> dict[str, str]:
    """Constructor env selecting a fresh database of the given backend."""
    if backend == "popo":
        return {"PERSISTENCE_MODULE": "eventsourcing.popo"}
    if backend == "sqlite_file":
        dbname = str(tmp_path / f"{uuid4().hex}.sqlite3")
    else:
        dbname = sqlite_memory_uri()
    return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": dbname}


@pytest.fixture(params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Constructor env for each backend in turn."""
    return backend_env(request.param, tmp_path)


# ---------------------------------------------------------------------------
# Domain model used below


class Dog(Aggregate):
    """A dog that learns tricks."""

    @event("Registered")
    def __init__(self, name: str) -> None:
        self.name = name
        self.tricks: list[str] = []

    @event("TrickAdded")
    def add_trick(self, trick: str) -> None:
        self.tricks.append(trick)


class DogSchool(Application[UUID]):
    """A small application with commands, used by most tests."""

    def register_dog(self, name: str) -> UUID:
        dog = Dog(name)
        self.save(dog)
        return dog.id

    def add_trick(self, dog_id: UUID, trick: str) -> None:
        dog: Dog = self.repository.get(dog_id)
        dog.add_trick(trick)
        self.save(dog)


class SnapshottingDogSchool(DogSchool):
    """Snapshots every dog at every second version."""

    snapshotting_intervals: ClassVar[dict[type[Any], int]] = {Dog: 2}


@pytest.fixture
def school(env: dict[str, str]) -> Iterator[DogSchool]:
    app = DogSchool(env=env)
    yield app
    app.close()


# ---------------------------------------------------------------------------
# The shipped reusable test cases, once per backend


class WithPOPO:
    expected_factory_topic = "eventsourcing.popo:POPOFactory"

    @pytest.fixture(autouse=True)
    def _persistence(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PERSISTENCE_MODULE", "eventsourcing.popo")


class WithSQLiteFile:
    expected_factory_topic = "eventsourcing.sqlite:SQLiteFactory"

    @pytest.fixture(autouse=True)
    def _persistence(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.setenv("PERSISTENCE_MODULE", "eventsourcing.sqlite")
        monkeypatch.setenv("SQLITE_DBNAME", str(tmp_path / "app.sqlite3"))


class WithSQLiteMemory:
    expected_factory_topic = "eventsourcing.sqlite:SQLiteFactory"

    @pytest.fixture(autouse=True)
    def _persistence(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PERSISTENCE_MODULE", "eventsourcing.sqlite")
        monkeypatch.setenv("SQLITE_DBNAME", sqlite_memory_uri())


class WithPostgres:
    expected_factory_topic = "eventsourcing.postgres:PostgresFactory"

    @pytest.fixture(autouse=True)
    def _persistence(
        self, monkeypatch: pytest.MonkeyPatch, postgres_database: PostgresDatabase
    ) -> None:
        monkeypatch.setenv("PERSISTENCE_MODULE", "eventsourcing.postgres")
        for key, value in postgres_database.env.items():
            monkeypatch.setenv(key, value)


class TestExampleApplicationPOPO(WithPOPO, reusable.ExampleApplicationTestCase):
    pass


class TestExampleApplicationSQLiteFile(WithSQLiteFile, reusable.ExampleApplicationTestCase):
    pass


class TestExampleApplicationSQLiteMemory(WithSQLiteMemory, reusable.ExampleApplicationTestCase):
    pass


class TestExampleApplicationPostgres(WithPostgres, reusable.ExampleApplicationTestCase):
    pass


class TestApplicationPOPO(WithPOPO, reusable.ApplicationTestCase):
    pass


class TestApplicationSQLiteFile(WithSQLiteFile, reusable.ApplicationTestCase):
    pass


class TestApplicationSQLiteMemory(WithSQLiteMemory, reusable.ApplicationTestCase):
    pass


class TestApplicationPostgres(WithPostgres, reusable.ApplicationTestCase):
    pass


# ---------------------------------------------------------------------------
# Naming and environment


def test_subclass_is_named_after_itself_unless_body_sets_name() -> None:
    class Kennel(Application[UUID]):
        pass

    class Named(Application[UUID]):
        name = "Shelter"

    class SubOfNamed(Named):
        pass

    assert Application.name == "Application"
    assert Application[UUID].name == "Application"
    assert Kennel.name == "Kennel"
    assert Named.name == "Shelter"
    assert SubOfNamed.name == "SubOfNamed"


class EnvApp(Application[UUID]):
    env: ClassVar[dict[str, str]] = {"COLOUR": "class", "SIZE": "class"}


def test_env_precedence_class_then_os_environ_then_constructor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert EnvApp().env.get("COLOUR") == "class"
    monkeypatch.setenv("COLOUR", "os")
    assert EnvApp().env.get("COLOUR") == "os"
    app = EnvApp(env={"COLOUR": "ctor"})
    assert app.env.get("COLOUR") == "ctor"
    assert app.env.get("SIZE") == "class"
    assert app.env.name == "EnvApp"


def test_env_name_prefixed_key_beats_plain_key_from_any_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Prefixed(Application[UUID]):
        env: ClassVar[dict[str, str]] = {"PREFIXED_COLOUR": "class-prefixed"}

    # The prefixed key from the weakest source still beats the plain key from the strongest.
    assert Prefixed(env={"COLOUR": "ctor"}).env.get("COLOUR") == "class-prefixed"
    monkeypatch.setenv("PREFIXED_COLOUR", "os-prefixed")
    assert Prefixed(env={"COLOUR": "ctor"}).env.get("COLOUR") == "os-prefixed"


def test_env_settings_take_effect_per_application_name(tmp_path: Path) -> None:
    class Alpha(Application[UUID]):
        pass

    class Beta(Application[UUID]):
        pass

    shared_env = {
        "AGGREGATE_CACHE_MAXSIZE": "3",
        "BETA_AGGREGATE_CACHE_MAXSIZE": "7",
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "ALPHA_SQLITE_DBNAME": str(tmp_path / "alpha.db"),
        "BETA_SQLITE_DBNAME": str(tmp_path / "beta.db"),
    }
    alpha, beta = Alpha(env=shared_env), Beta(env=shared_env)
    try:
        assert isinstance(alpha.repository.cache, LRUCache)
        assert alpha.repository.cache.maxsize == 3
        assert isinstance(beta.repository.cache, LRUCache)
        assert beta.repository.cache.maxsize == 7
        alpha.save(Aggregate())
        assert alpha.recorder.max_notification_id() == 1
        assert beta.recorder.max_notification_id() is None
    finally:
        alpha.close()
        beta.close()


def test_os_environ_is_not_changed_by_constructing_an_application() -> None:
    import os

    before = dict(os.environ)
    EnvApp(env={"COLOUR": "ctor"}).close()
    assert dict(os.environ) == before


def test_snapshotting_class_attributes_enable_snapshot_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Enabled(Application[UUID]):
        is_snapshotting_enabled = True

    assert Application[UUID]().snapshots is None
    assert Enabled().snapshots is not None
    assert Enabled().env["IS_SNAPSHOTTING_ENABLED"] == "y"
    assert SnapshottingDogSchool().snapshots is not None
    assert Application[UUID](env={"IS_SNAPSHOTTING_ENABLED": "yes"}).snapshots is not None
    # The class attribute is only a default: os.environ and the constructor override it.
    monkeypatch.setenv("IS_SNAPSHOTTING_ENABLED", "n")
    assert Enabled().snapshots is None
    assert Enabled(env={"IS_SNAPSHOTTING_ENABLED": "y"}).snapshots is not None


def test_construction_hooks_run_in_order_and_build_the_parts(env: dict[str, str]) -> None:
    calls: list[str] = []

    class Traced(Application[UUID]):
        is_snapshotting_enabled = True

        def __getattribute__(self, name: str) -> Any:
            if name.startswith("construct_"):
                calls.append(name)
            return super().__getattribute__(name)

    app = Traced(env=env)
    try:
        assert calls == [
            "construct_env",
            "construct_factory",
            "construct_mapper",
            "construct_transcoder",
            "construct_recorder",
            "construct_event_store",
            "construct_snapshot_store",
            "construct_repository",
            "construct_notification_log",
        ]
        assert app.events.mapper is app.mapper
        assert app.events.recorder is app.recorder
        assert app.snapshots is not None and app.snapshots.mapper is app.mapper
        assert app.repository.event_store is app.events
        assert app.repository.snapshot_store is app.snapshots
        assert isinstance(app.notification_log, LocalNotificationLog)
        assert app.notification_log.recorder is app.recorder
        assert not app.closing.is_set()
    finally:
        app.close()


def test_register_transcodings_is_used_for_custom_value_types(env: dict[str, str]) -> None:
    app = BankAccounts(env=env)
    try:
        assert isinstance(app.mapper.transcoder, JSONTranscoder)
        account_id = app.open_account("Bob", "bob@example.com")
        app.credit_account(account_id, Decimal("12.50"))
        account = app.get_account(account_id)
        assert account.email_address.address == "bob@example.com"
        assert account.balance == Decimal("12.50")
    finally:
        app.close()


def test_repository_cache_settings_are_read_from_env() -> None:
    repository = Application[UUID]().repository
    assert repository.cache is None
    assert (repository.fastforward, repository.fastforward_skipping) == (True, False)
    assert repository.deepcopy_from_cache is True

    repository = Application[UUID](
        env={
            "AGGREGATE_CACHE_MAXSIZE": "0",
            "AGGREGATE_CACHE_FASTFORWARD": "n",
            "AGGREGATE_CACHE_FASTFORWARD_SKIPPING": "y",
            "DEEPCOPY_FROM_AGGREGATE_CACHE": "n",
        }
    ).repository
    assert type(repository.cache) is Cache
    assert (repository.fastforward, repository.fastforward_skipping) == (False, True)
    assert repository.deepcopy_from_cache is False

    cache = Application[UUID](env={"AGGREGATE_CACHE_MAXSIZE": "2"}).repository.cache
    assert isinstance(cache, LRUCache) and cache.maxsize == 2
    assert Application[UUID](env={"AGGREGATE_CACHE_MAXSIZE": ""}).repository.cache is None


def test_bad_cache_settings_name_the_variable() -> None:
    with pytest.raises(ValueError, match="AGGREGATE_CACHE_MAXSIZE value 'lots'"):
        Application[UUID](env={"AGGREGATE_CACHE_MAXSIZE": "lots"})
    with pytest.raises(ValueError, match="AGGREGATE_CACHE_FASTFORWARD value 'maybe'"):
        Application[UUID](env={"AGGREGATE_CACHE_FASTFORWARD": "maybe"})


# ---------------------------------------------------------------------------
# save()


def test_save_records_aggregates_and_returns_recordings(school: DogSchool) -> None:
    assert school.save() == []
    assert school.save(None) == []
    dog = Dog("Fido")
    dog.add_trick("roll over")
    recordings = school.save(dog, None)
    assert dog.pending_events == []
    assert all(isinstance(r, Recording) for r in recordings)
    assert [r.notification.id for r in recordings] == [1, 2]
    assert [r.domain_event.originator_version for r in recordings] == [1, 2]
    assert recordings[1].notification.originator_id == dog.id
    assert recordings[1].notification.topic.endswith("Dog.TrickAdded")

    copy: Dog = school.repository.get(dog.id)
    assert (copy.name, copy.tricks, copy.version) == ("Fido", ["roll over"], 2)


def test_save_of_several_aggregates_gives_consecutive_ids(school: DogSchool) -> None:
    ids = [r.notification.id for r in school.save(Dog("a"), Dog("b"), Dog("c"))]
    assert ids == [1, 2, 3]
    assert [r.notification.id for r in school.save(Dog("d"))] == [4]


def test_save_accepts_bare_events(school: DogSchool) -> None:
    dog = Dog("Rex")
    events = dog.collect_events()
    recordings = school.save(*events)
    assert [r.domain_event for r in recordings] == events
    assert school.repository.get(dog.id).name == "Rex"


def test_save_passes_keyword_arguments_to_the_event_store(school: DogSchool) -> None:
    received: list[dict[str, Any]] = []
    original_put = school.events.put

    def spying_put(events: Any, **kwargs: Any) -> Any:
        received.append(dict(kwargs))
        kwargs.pop("colour")
        return original_put(events, **kwargs)

    school.events.put = spying_put  # type: ignore[method-assign]
    school.save(Dog("Spot"), colour="brown")
    assert received == [{"tracking": None, "colour": "brown"}]


def test_version_conflict_rejects_the_whole_batch(school: DogSchool) -> None:
    dog_id = school.register_dog("Fido")
    stale: Dog = school.repository.get(dog_id)
    school.add_trick(dog_id, "sit")
    max_id_before = school.recorder.max_notification_id()

    # Given a batch whose second aggregate conflicts with a stored event.
    newcomer = Dog("Newcomer")
    stale.add_trick("stay")
    with pytest.raises(IntegrityError):
        school.save(newcomer, stale)

    # Then nothing of the batch was written, and the pending events were drained.
    assert school.recorder.max_notification_id() == max_id_before
    with pytest.raises(AggregateNotFoundError):
        school.repository.get(newcomer.id)
    assert school.repository.get(dog_id).tricks == ["sit"]
    assert newcomer.pending_events == [] and stale.pending_events == []


def test_save_calls_notify_hooks_after_recording(env: dict[str, str]) -> None:
    notified: list[Any] = []

    class Noisy(DogSchool):
        def _notify(self, recordings: list[Recording[UUID]]) -> None:
            notified.append(("_notify", [r.notification.id for r in recordings]))

        def notify(self, new_events: list[Any]) -> None:
            notified.append(("notify", [e.originator_version for e in new_events]))

    app = Noisy(env=env)
    try:
        dog = Dog("x")
        dog.add_trick("y")
        app.save(dog)
        assert notified == [("_notify", [1, 2]), ("notify", [1, 2])]
    finally:
        app.close()


# ---------------------------------------------------------------------------
# Repository through the application


def test_unknown_aggregate_gives_exact_not_found_message(school: DogSchool) -> None:
    missing = uuid4()
    with pytest.raises(AggregateNotFoundError) as info:
        school.repository.get(missing)
    assert info.value.args[0] == f"Aggregate {missing!r} version None not found."
    with pytest.raises(AggregateNotFoundError) as info:
        school.repository.get(missing, version=3)
    assert info.value.args[0] == f"Aggregate {missing!r} version 3 not found."
    assert missing not in school.repository


def test_get_at_version(school: DogSchool) -> None:
    dog_id = school.register_dog("Fido")
    for trick in ("sit", "stay", "roll"):
        school.add_trick(dog_id, trick)
    assert dog_id in school.repository
    assert school.repository.get(dog_id, version=1).tricks == []
    assert school.repository.get(dog_id, version=3).tricks == ["sit", "stay"]
    assert school.repository.get(dog_id, version=99).version == 4
    # A version below the first event is "not found".
    with pytest.raises(AggregateNotFoundError, match="version 0 not found"):
        school.repository.get(dog_id, version=0)


def test_get_with_custom_projector(school: DogSchool) -> None:
    dog_id = school.register_dog("Fido")
    school.add_trick(dog_id, "sit")
    seen: list[int] = []

    def counting_projector(aggregate: Any, events: Any) -> Any:
        for e in events:
            seen.append(e.originator_version)
            aggregate = e.mutate(aggregate)
        return aggregate

    assert school.repository.get(dog_id, projector_func=counting_projector).tricks == ["sit"]
    assert seen == [1, 2]
    with pytest.raises(AggregateNotFoundError):
        school.repository.get(dog_id, projector_func=lambda _agg, _events: None)


def test_project_aggregate_folds_events() -> None:
    dog = Dog("Fido")
    dog.add_trick("sit")
    events = dog.collect_events()
    rebuilt = project_aggregate(None, events)
    assert rebuilt == dog
    assert project_aggregate(None, []) is None


# ---------------------------------------------------------------------------
# Caching modes


def cached_school(env: dict[str, str], **settings: str) -> DogSchool:
    return DogSchool(env={**env, "AGGREGATE_CACHE_MAXSIZE": "10", **settings})


def test_cache_with_fastforward(env: dict[str, str]) -> None:
    app = cached_school(env)
    try:
        cache = app.repository.cache
        assert cache is not None
        dog_id = app.register_dog("Fido")
        with pytest.raises(KeyError):
            cache.get(dog_id)  # save() does not fill the cache when fast-forwarding

        app.add_trick(dog_id, "sit")  # the get() inside fills it
        cached = cache.get(dog_id)
        assert cached.version == 1  # save() did not update it either

        dog: Dog = app.repository.get(dog_id)
        assert dog.tricks == ["sit"]
        assert cache.get(dog_id) is cached and cached.version == 2
        assert dog is not cached  # deep copy by default
        assert app.repository._fastforward_locks_inuse == {}
    finally:
        app.close()


def test_cache_fastforwards_events_saved_by_another_application_instance(
    tmp_path: Path,
) -> None:
    env = backend_env("sqlite_file", tmp_path)
    writer, reader = DogSchool(env=env), cached_school(env)
    try:
        dog_id = writer.register_dog("Fido")
        assert reader.repository.get(dog_id).tricks == []
        writer.add_trick(dog_id, "sit")
        assert reader.repository.get(dog_id).tricks == ["sit"]
    finally:
        writer.close()
        reader.close()


def test_cache_without_fastforward_is_filled_by_save(env: dict[str, str]) -> None:
    app = cached_school(env, AGGREGATE_CACHE_FASTFORWARD="n")
    try:
        cache = app.repository.cache
        assert cache is not None
        dog = Dog("Fido")
        app.save(dog)
        assert cache.get(dog.id) is dog

        # Events recorded behind the repository's back are not seen...
        other = app.repository.get(dog.id)
        other.add_trick("sit")
        app.events.put(other.collect_events())
        stale: Dog = app.repository.get(dog.id)
        assert stale.version == 1

        # ...so a command on the stale state conflicts.
        stale.add_trick("stay")
        with pytest.raises(IntegrityError):
            app.save(stale)
        # Asking for a version always reads the store.
        assert app.repository.get(dog.id, version=2).tricks == ["sit"]
    finally:
        app.close()


def test_cache_fastforward_skipping_serves_cached_state_while_locked(env: dict[str, str]) -> None:
    app = cached_school(env, AGGREGATE_CACHE_FASTFORWARD_SKIPPING="y")
    try:
        repository = app.repository
        dog_id = app.register_dog("Fido")
        repository.get(dog_id)
        app.add_trick(dog_id, "sit")

        # While another user holds the aggregate's lock, get() does not wait for it.
        lock = repository._use_fastforward_lock(dog_id)
        with lock:
            assert repository.get(dog_id).version == 1
        repository._disuse_fastforward_lock(dog_id)
        assert repository._fastforward_locks_inuse == {}
        assert repository.get(dog_id).version == 2
    finally:
        app.close()


def test_cache_fastforward_skipping_argument(env: dict[str, str]) -> None:
    app = cached_school(env)
    try:
        repository = app.repository
        dog_id = app.register_dog("Fido")
        repository.get(dog_id)
        app.add_trick(dog_id, "sit")
        lock = repository._use_fastforward_lock(dog_id)
        with lock:
            assert repository.get(dog_id, fastforward_skipping=True).version == 1
            # Without skipping, get() waits for the lock.
            result: list[int] = []
            waiter = threading.Thread(target=lambda: result.append(repository.get(dog_id).version))
            waiter.start()
            waiter.join(timeout=0.2)
            assert waiter.is_alive() and result == []
        waiter.join(timeout=5)
        assert result == [2]
        repository._disuse_fastforward_lock(dog_id)
        assert repository._fastforward_locks_inuse == {}
    finally:
        app.close()


def test_cache_deepcopy_modes(env: dict[str, str]) -> None:
    app = cached_school(env)
    try:
        cache = app.repository.cache
        assert cache is not None
        dog_id = app.register_dog("Fido")
        copy: Dog = app.repository.get(dog_id)
        copy.tricks.append("mutated")
        assert cache.get(dog_id).tricks == []
        shared: Dog = app.repository.get(dog_id, deepcopy_from_cache=False)
        assert shared is cache.get(dog_id)
        app.repository.deepcopy_from_cache = False
        assert app.repository.get(dog_id) is shared
        # The argument cannot switch copying on when the attribute is off.
        assert app.repository.get(dog_id, deepcopy_from_cache=True) is shared
    finally:
        app.close()


def test_deepcopy_setting_from_env(env: dict[str, str]) -> None:
    app = cached_school(env, DEEPCOPY_FROM_AGGREGATE_CACHE="n")
    try:
        dog_id = app.register_dog("Fido")
        assert app.repository.get(dog_id) is app.repository.get(dog_id)
    finally:
        app.close()


def test_lru_cache_evicts_least_recently_used(env: dict[str, str]) -> None:
    app = DogSchool(env={**env, "AGGREGATE_CACHE_MAXSIZE": "2"})
    try:
        cache = app.repository.cache
        assert isinstance(cache, LRUCache)
        a, b, c = (app.register_dog(n) for n in "abc")
        app.repository.get(a)
        app.repository.get(b)
        app.repository.get(a)  # b is now the least recently used
        app.repository.get(c)
        assert set(cache.cache) == {a, c}
        assert app.repository.get(b).name == "b"  # still readable from the store
    finally:
        app.close()


def test_unbounded_cache_keeps_everything(env: dict[str, str]) -> None:
    app = DogSchool(env={**env, "AGGREGATE_CACHE_MAXSIZE": "-1"})
    try:
        ids = [app.register_dog(str(i)) for i in range(20)]
        for dog_id in ids:
            app.repository.get(dog_id)
        assert type(app.repository.cache) is Cache
        assert set(app.repository.cache.cache) == set(ids)
    finally:
        app.close()


# ---------------------------------------------------------------------------
# Snapshots


def test_snapshots_by_interval(env: dict[str, str]) -> None:
    app = SnapshottingDogSchool(env=env)
    try:
        assert app.snapshots is not None
        dog_id = app.register_dog("Fido")
        assert list(app.snapshots.get(dog_id)) == []
        for trick in ("a", "b", "c", "d"):
            app.add_trick(dog_id, trick)
        snapshots = list(app.snapshots.get(dog_id))
        assert [s.originator_version for s in snapshots] == [2, 4]
        assert all(isinstance(s, Snapshot) for s in snapshots)
        assert snapshots[-1].state["tricks"] == ["a", "b", "c"]

        dog: Dog = app.repository.get(dog_id)
        assert (dog.version, dog.tricks) == (5, ["a", "b", "c", "d"])
        assert app.repository.get(dog_id, version=3).tricks == ["a", "b"]
        assert app.repository.get(dog_id, version=1).tricks == []
    finally:
        app.close()


def test_snapshot_interval_reached_inside_a_batch(env: dict[str, str]) -> None:
    app = SnapshottingDogSchool(env=env)
    try:
        assert app.snapshots is not None
        dog = Dog("Fido")
        for trick in ("a", "b", "c"):
            dog.add_trick(trick)
        app.save(dog)
        assert [s.originator_version for s in app.snapshots.get(dog.id)] == [2, 4]
        # Bare events are not snapshotted: only aggregates passed to save() are.
        other = Dog("Rex")
        other.add_trick("a")
        app.save(*other.collect_events())
        assert list(app.snapshots.get(other.id)) == []
    finally:
        app.close()


def test_snapshot_is_read_instead_of_earlier_events(env: dict[str, str]) -> None:
    app = SnapshottingDogSchool(env=env)
    try:
        dog_id = app.register_dog("Fido")
        app.add_trick(dog_id, "a")  # version 2: snapshot
        app.add_trick(dog_id, "b")
        versions_read: list[int] = []

        def recording_projector(aggregate: Any, events: Any) -> Any:
            for e in events:
                versions_read.append(e.originator_version)
                aggregate = e.mutate(aggregate)
            return aggregate

        assert app.repository.get(dog_id, projector_func=recording_projector).tricks == ["a", "b"]
        assert versions_read == [2, 3]  # the snapshot, then the later event
    finally:
        app.close()


def test_manual_take_snapshot(env: dict[str, str]) -> None:
    app = DogSchool(env={**env, "IS_SNAPSHOTTING_ENABLED": "y"})
    try:
        assert app.snapshots is not None
        dog_id = app.register_dog("Fido")
        app.add_trick(dog_id, "sit")
        app.add_trick(dog_id, "stay")
        app.take_snapshot(dog_id, version=2)
        app.take_snapshot(dog_id)
        snapshots = list(app.snapshots.get(dog_id))
        assert [s.originator_version for s in snapshots] == [2, 3]
        assert app.repository.get(dog_id).tricks == ["sit", "stay"]
    finally:
        app.close()


def test_take_snapshot_without_snapshot_store_raises_exact_assertion(school: DogSchool) -> None:
    with pytest.raises(AssertionError) as info:
        school.take_snapshot(uuid4())
    assert info.value.args[0] == (
        "Can't take snapshot without snapshots store. Please set environment variable "
        "IS_SNAPSHOTTING_ENABLED to a true value (e.g. 'y'), or set 'is_snapshotting_enabled' "
        "on application class, or set 'snapshotting_intervals' on application class."
    )


# A hand-written aggregate whose events have no mutate(): it needs a projector to be
# snapshotted, and the application's snapshot class because it has no nested Snapshot.


class Tally:
    """A counter aggregate that is not an Aggregate subclass."""

    def __init__(self, tally_id: UUID) -> None:
        self.id = tally_id
        self.version = 0
        self.count = 0
        self._pending: list[DomainEvent] = []

    def increment(self) -> None:
        self.version += 1
        self.count += 1
        self._pending.append(
            Tally.Incremented(
                originator_id=self.id,
                originator_version=self.version,
                timestamp=Tally.Incremented.create_timestamp(),
            )
        )

    def collect_events(self) -> list[DomainEvent]:
        events, self._pending = self._pending, []
        return events

    class Incremented(DomainEvent):
        pass


def project_tally(tally: Any, events: Any) -> Any:
    for e in events:
        if isinstance(e, Snapshot):
            tally = e.mutate(None)
        else:
            if tally is None:
                tally = Tally(e.originator_id)
            tally.count += 1
            tally.version = e.originator_version
    return tally


def test_interval_snapshot_of_events_without_mutate_needs_a_projector(
    env: dict[str, str],
) -> None:
    class NoProjector(Application[UUID]):
        snapshotting_intervals: ClassVar[dict[type[Any], int]] = {Tally: 2}
        snapshot_class = Snapshot

    app = NoProjector(env=env)
    try:
        tally = Tally(uuid4())
        tally.increment()
        app.save(tally)
        tally.increment()
        with pytest.raises(ProgrammingError, match="snapshotting_projectors"):
            app.save(tally)
    finally:
        app.close()


def test_interval_snapshot_with_projector_and_application_snapshot_class(
    env: dict[str, str],
) -> None:
    class WithProjector(Application[UUID]):
        snapshotting_intervals: ClassVar[dict[type[Any], int]] = {Tally: 2}
        snapshotting_projectors: ClassVar[dict[type[Any], Any]] = {Tally: project_tally}
        snapshot_class = Snapshot

    app = WithProjector(env=env)
    try:
        assert app.snapshots is not None
        tally = Tally(uuid4())
        for _ in range(3):
            tally.increment()
            app.save(tally)
        snapshots = list(app.snapshots.get(tally.id))
        assert [s.originator_version for s in snapshots] == [2]
        assert snapshots[0].state["count"] == 2
        rebuilt = app.repository.get(tally.id, projector_func=project_tally)
        assert (rebuilt.version, rebuilt.count) == (3, 3)
    finally:
        app.close()


def test_take_snapshot_without_any_snapshot_class(env: dict[str, str]) -> None:
    app = Application[UUID](env={**env, "IS_SNAPSHOTTING_ENABLED": "y"})
    try:
        tally = Tally(uuid4())
        tally.increment()
        app.save(tally)
        with pytest.raises(AssertionError, match="'snapshot_class'"):
            app.take_snapshot(tally.id, projector_func=project_tally)
    finally:
        app.close()


# ---------------------------------------------------------------------------
# Notification log


def five_notifications(app: DogSchool) -> None:
    dog = Dog("Fido")
    for trick in ("a", "b", "c", "d"):
        dog.add_trick(trick)
    app.save(dog)


def test_notification_log_sections_match_the_contract_examples(school: DogSchool) -> None:
    five_notifications(school)
    log = school.notification_log
    assert log.section_size == LocalNotificationLog.DEFAULT_SECTION_SIZE == 10

    def ids(section: Section) -> tuple[str | None, str | None, list[int]]:
        return section.id, section.next_id, [n.id for n in section.items]

    assert ids(log["1,10"]) == ("1,5", None, [1, 2, 3, 4, 5])
    assert ids(log["2,3"]) == ("2,3", "4,5", [2, 3])
    assert ids(log["6,10"]) == (None, None, [])
    assert ids(log["0,9"]) == ("1,5", None, [1, 2, 3, 4, 5])
    assert ids(log["1,5"]) == ("1,5", "6,10", [1, 2, 3, 4, 5])
    assert ids(log["3,2"]) == (None, None, [])


def test_notification_log_section_is_limited_by_section_size(env: dict[str, str]) -> None:
    class SmallPages(DogSchool):
        log_section_size = 2

    app = SmallPages(env=env)
    try:
        five_notifications(app)
        section = app.notification_log["1,10"]
        assert (section.id, section.next_id) == ("1,2", "3,4")
        assert LocalNotificationLog.format_section_id(3, 4) == "3,4"
    finally:
        app.close()


def test_notification_log_select(school: DogSchool) -> None:
    five_notifications(school)
    other = Dog("Rex")
    school.save(other)
    log = school.notification_log
    assert [n.id for n in log.select(start=2, limit=3)] == [2, 3, 4]
    assert [n.id for n in log.select(start=2, limit=10, stop=3)] == [2, 3]
    assert [n.id for n in log.select(start=2, limit=3, inclusive_of_start=False)] == [3, 4, 5]
    assert [n.id for n in log.select(start=None, limit=2)] == [1, 2]
    registered = [n.id for n in log.select(1, 10, topics=[log.select(1, 1)[0].topic])]
    assert registered == [1, 6]
    assert all(n.originator_id == other.id for n in log.select(6, 10))
    with pytest.raises(ValueError) as info:
        log.select(start=1, limit=11)
    assert info.value.args[0] == "Requested limit 11 greater than section size 10"


def test_bad_section_id_says_what_is_expected(school: DogSchool) -> None:
    with pytest.raises(ValueError, match="expected two integers separated by a comma"):
        school.notification_log["first"]


def test_deprecated_log_property_warns(school: DogSchool) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert school.log is school.notification_log
    assert [str(w.message) for w in caught] == [
        "'log' is deprecated, use 'notification_log' instead"
    ]
    assert caught[0].category is DeprecationWarning


# ---------------------------------------------------------------------------
# ProcessingEvent


def test_processing_event_collects_events_and_aggregates() -> None:
    tracking = Tracking(application_name="Upstream", notification_id=7)
    processing_event: ProcessingEvent[UUID] = ProcessingEvent(tracking)
    assert processing_event.tracking is tracking
    assert (processing_event.events, processing_event.aggregates) == ([], {})
    assert ProcessingEvent().tracking is None

    dog = Dog("Fido")
    dog.add_trick("sit")
    loose = Dog("Rex").collect_events()[0]
    processing_event.collect_events(dog, None, loose, colour="red")
    processing_event.collect_events(size="small")
    assert [e.originator_version for e in processing_event.events] == [1, 2, 1]
    assert processing_event.events[2] is loose
    assert processing_event.aggregates == {dog.id: dog}
    assert processing_event.saved_kwargs == {"colour": "red", "size": "small"}
    assert dog.pending_events == []


def test_processing_event_save_is_deprecated() -> None:
    processing_event: ProcessingEvent[UUID] = ProcessingEvent()
    dog = Dog("Fido")
    with pytest.warns(DeprecationWarning) as caught:
        processing_event.save(dog)
    assert str(caught[0].message) == "'save()' is deprecated, use 'collect_events()' instead"
    assert processing_event.aggregates == {dog.id: dog}
    assert len(processing_event.events) == 1


def test_record_stores_processing_event(school: DogSchool) -> None:
    processing_event: ProcessingEvent[UUID] = ProcessingEvent()
    processing_event.collect_events(Dog("Fido"))
    recordings = school._record(processing_event)
    assert [r.notification.id for r in recordings] == [1]
    school._take_snapshots(processing_event)  # no intervals: nothing to do


# ---------------------------------------------------------------------------
# EventSourcedLog


@dataclass(frozen=True)
class NameLogged(DomainEvent):
    """An entry of a log of dog names."""

    name: str


def test_event_sourced_log(env: dict[str, str]) -> None:
    app = DogSchool(env=env)
    try:
        log: EventSourcedLog[NameLogged] = EventSourcedLog(app.events, uuid4(), NameLogged)
        assert (log.events, log.logged_cls) == (app.events, NameLogged)
        assert log.get_first() is None and log.get_last() is None

        first = log.trigger_event(name="Fido")
        assert (first.originator_id, first.originator_version) == (log.originator_id, 1)
        assert first.timestamp.tzinfo is not None
        assert log.get_last() is None  # triggering does not save
        app.save(first)

        second = log.trigger_event(name="Rex")
        assert second.originator_version == 2
        app.save(second, log.trigger_event(next_originator_version=3, name="Spot"))

        first_logged, last_logged = log.get_first(), log.get_last()
        assert first_logged is not None and first_logged.name == "Fido"
        assert last_logged is not None and last_logged.name == "Spot"
        assert [e.name for e in log.get()] == ["Fido", "Rex", "Spot"]
        assert [e.name for e in log.get(gt=1, lte=2)] == ["Rex"]
        assert [e.name for e in log.get(desc=True, limit=2)] == ["Spot", "Rex"]

        # A version that is already taken conflicts when saved.
        with pytest.raises(IntegrityError):
            app.save(log.trigger_event(next_originator_version=2, name="Dup"))
    finally:
        app.close()


class Credited(NameLogged):
    """A log entry of a subclass of the logged class."""


def test_event_sourced_log_subclass_triggers_other_event_classes(env: dict[str, str]) -> None:
    class NameLog(EventSourcedLog[NameLogged]):
        def credited(self, name: str) -> Credited:
            return self._trigger_event(logged_cls=Credited, name=name)

    app = DogSchool(env=env)
    try:
        log = NameLog(events=app.events, originator_id=uuid4(), logged_cls=NameLogged)
        app.save(log.trigger_event(name="plain"))
        entry = log.credited("special")
        assert isinstance(entry, Credited) and entry.originator_version == 2
        app.save(entry)
        assert [type(e) for e in log.get()] == [NameLogged, Credited]
    finally:
        app.close()


# ---------------------------------------------------------------------------
# Lifecycle


def test_close_and_context_manager(env: dict[str, str]) -> None:
    with DogSchool(env=env) as app:
        dog_id = app.register_dog("Fido")
        assert app.repository.get(dog_id).name == "Fido"
    assert app.closing.is_set()


def test_half_constructed_application_is_collected_quietly(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    class Broken(Application[UUID]):
        def construct_factory(self, env: Any) -> Any:
            raise RuntimeError("no factory today")

    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with pytest.raises(RuntimeError, match="no factory today"):
        Broken(env=env)
    gc.collect()
    assert unraisable == []


def test_bank_account_example_rules(env: dict[str, str]) -> None:
    app = BankAccounts(env=env)
    try:
        account_id = app.open_account("Alice", "alice@example.com")
        account = app.get_account(account_id)
        account.set_overdraft_limit(Decimal("5.00"))
        account.append_transaction(Decimal("-5.00"))
        app.save(account)
        account = app.get_account(account_id)
        assert (account.balance, account.overdraft_limit) == (Decimal("-5.00"), Decimal("5.00"))
        from eventsourcing.tests.domain import AccountClosedError, InsufficientFundsError

        with pytest.raises(InsufficientFundsError):
            account.append_transaction(Decimal("-0.01"))
        account.close()
        app.save(account)
        account = app.get_account(account_id)
        assert account.is_closed
        with pytest.raises(AccountClosedError):
            account.append_transaction(Decimal("1.00"))
        assert isinstance(account, BankAccount)
    finally:
        app.close()


# ---------------------------------------------------------------------------
# String aggregate ids


class StrAggregate(BaseAggregate[str]):
    """Base of aggregates with string ids."""

    class Event(CanMutateAggregate[str], metaclass=MetaDomainEvent):
        originator_id: str
        originator_version: int
        timestamp: datetime

    class Created(Event, CanInitAggregate[str]):
        originator_topic: str


class Account(StrAggregate):
    """An account whose id is derived from its number."""

    @staticmethod
    def create_id(number: str) -> str:
        return f"account-{number}"

    def __init__(self, number: str) -> None:
        self.number = number
        self.balance = 0

    @event("Deposited")
    def deposit(self, amount: int) -> None:
        self.balance += amount


class Ledger(Application[str]):
    """An application of aggregates with string ids."""


def test_string_aggregate_ids(env: dict[str, str]) -> None:
    app = Ledger(env={**env, "ORIGINATOR_ID_TYPE": "text"})
    try:
        account = Account("42")
        account.deposit(5)
        app.save(account)
        copy: Account = app.repository.get("account-42")
        assert (copy.id, copy.balance, copy.version) == ("account-42", 5, 2)
        assert app.notification_log["1,10"].items[0].originator_id == "account-42"
        with pytest.raises(AggregateNotFoundError) as info:
            app.repository.get("account-43")
        assert str(info.value) == "Aggregate 'account-43' version None not found."
    finally:
        app.close()
