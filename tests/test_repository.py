"""Repository, Cache and LRUCache, used directly (without an Application).

Event stores come from each persistence module's factory: POPO, a SQLite file and a shared
in-memory SQLite database.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from eventsourcing.application import (
    AggregateNotFoundError,
    Cache,
    LRUCache,
    Repository,
    project_aggregate,
)
from eventsourcing.domain import Aggregate, DomainEvent, Snapshot
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    EventStore,
    InfrastructureFactory,
    JSONTranscoder,
    UUIDAsHex,
)
from eventsourcing.tests.application import EmailAddressAsStr
from eventsourcing.tests.domain import BankAccount

# ---------------------------------------------------------------------------
# Cache and LRUCache


def test_cache_put_get_evict() -> None:
    cache: Cache[int, str] = Cache()
    with pytest.raises(KeyError):
        cache.get(1)
    cache.put(1, "one")
    cache.put(2, "two")
    cache.put(3, None)  # ignored
    assert (cache.get(1), cache.get(2)) == ("one", "two")
    assert cache.cache == {1: "one", 2: "two"}
    cache.put(1, "uno")
    assert cache.get(1) == "uno"
    assert cache.get(1, evict=True) == "uno"
    with pytest.raises(KeyError):
        cache.get(1)
    with pytest.raises(KeyError):
        cache.get(1, evict=True)


def test_lru_cache_evicts_least_recently_used() -> None:
    cache: LRUCache[int, str] = LRUCache(maxsize=2)
    assert isinstance(cache, Cache)
    assert cache.put(1, "a") == (None, None)
    assert cache.put(2, "b") == (None, None)
    assert cache.get(1) == "a"  # 2 is now least recently used
    assert cache.put(3, "c") == (2, "b")
    assert set(cache.cache) == {1, 3}
    with pytest.raises(KeyError):
        cache.get(2)
    # Updating an entry refreshes it without evicting anything.
    assert cache.put(1, "A") == (None, None)
    assert cache.put(4, "d") == (3, "c")
    assert (cache.get(1), cache.get(4)) == ("A", "d")


def test_lru_cache_evict_and_clear() -> None:
    cache: LRUCache[int, str] = LRUCache(maxsize=3)
    for key in range(3):
        cache.put(key, str(key))
    assert cache.get(1, evict=True) == "1"
    assert set(cache.cache) == {0, 2}
    # After an eviction there is room again: nothing else is dropped.
    assert cache.put(5, "5") == (None, None)
    assert cache.put(1, None) == (None, None)
    assert 1 not in cache.cache
    cache.clear()
    assert len(cache.cache) == 0
    with pytest.raises(KeyError):
        cache.get(0)


def test_lru_cache_is_thread_safe() -> None:
    cache: LRUCache[int, int] = LRUCache(maxsize=50)
    errors: list[BaseException] = []

    def hammer(offset: int) -> None:
        try:
            for i in range(2000):
                cache.put((offset + i) % 120, i)
                with contextlib.suppress(KeyError):
                    cache.get((offset + i * 7) % 120)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=hammer, args=(n * 13,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(cache.cache) == 50


# ---------------------------------------------------------------------------
# Event stores per backend


def sqlite_env(dbname: str) -> dict[str, str]:
    return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": dbname}


@pytest.fixture(params=["popo", "sqlite_file", "sqlite_memory"])
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[InfrastructureFactory[Any]]:
    if request.param == "popo":
        env = {"PERSISTENCE_MODULE": "eventsourcing.popo"}
    elif request.param == "sqlite_file":
        env = sqlite_env(str(tmp_path / "repo.sqlite3"))
    else:
        env = sqlite_env(f"file:{uuid4().hex}?mode=memory&cache=shared")
    factory = InfrastructureFactory.construct(env)
    yield factory
    factory.close()


def make_transcoder() -> JSONTranscoder:
    transcoder = JSONTranscoder()
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO(), EmailAddressAsStr()):
        transcoder.register(transcoding)
    return transcoder


@pytest.fixture
def event_store(factory: InfrastructureFactory[Any]) -> EventStore[UUID]:
    mapper = factory.mapper(transcoder=make_transcoder())
    return factory.event_store(mapper=mapper, recorder=factory.aggregate_recorder())


@pytest.fixture
def snapshot_store(factory: InfrastructureFactory[Any]) -> EventStore[UUID]:
    mapper = factory.mapper(transcoder=make_transcoder())
    recorder = factory.aggregate_recorder(purpose="snapshots")
    return factory.event_store(mapper=mapper, recorder=recorder)


def stored_account(event_store: EventStore[UUID], *amounts: str) -> BankAccount:
    """An account with one transaction per amount, stored; its events are collected."""
    account = BankAccount.open(full_name="Alice", email_address="alice@example.com")
    for amount in amounts:
        account.append_transaction(Decimal(amount))
    event_store.put(account.collect_events())
    return account


# ---------------------------------------------------------------------------
# Construction


def test_cache_kind_follows_cache_maxsize(event_store: EventStore[UUID]) -> None:
    assert Repository(event_store).cache is None
    assert type(Repository(event_store, cache_maxsize=0).cache) is Cache
    assert type(Repository(event_store, cache_maxsize=-5).cache) is Cache
    lru = Repository(event_store, cache_maxsize=2).cache
    assert isinstance(lru, LRUCache) and lru.maxsize == 2

    repository = Repository(event_store)
    assert repository.event_store is event_store and repository.snapshot_store is None
    assert (repository.fastforward, repository.fastforward_skipping) == (True, False)
    assert repository.deepcopy_from_cache is True
    assert Repository.FASTFORWARD_LOCKS_CACHE_MAXSIZE == 50
    assert repository._fastforward_locks_inuse == {}


# ---------------------------------------------------------------------------
# Reading without a cache


def test_get_replays_events_and_versions(event_store: EventStore[UUID]) -> None:
    repository: Repository[UUID] = Repository(event_store)
    account = stored_account(event_store, "10.00", "25.00", "30.00")

    copy: BankAccount = repository.get(account.id)
    assert copy == account
    assert (copy.balance, copy.version) == (Decimal("65.00"), 4)
    balances = [repository.get(account.id, version=v).balance for v in (1, 2, 3, 4, 5)]
    assert balances == [Decimal(b) for b in ("0.00", "10.00", "35.00", "65.00", "65.00")]
    assert account.id in repository


def test_not_found_messages(event_store: EventStore[UUID]) -> None:
    repository: Repository[UUID] = Repository(event_store)
    missing = uuid4()
    with pytest.raises(AggregateNotFoundError) as info:
        repository.get(missing)
    assert str(info.value) == f"Aggregate {missing!r} version None not found."
    assert missing not in repository

    account = stored_account(event_store)
    with pytest.raises(AggregateNotFoundError) as info:
        repository.get(account.id, version=0)
    assert str(info.value) == f"Aggregate {account.id!r} version 0 not found."


def test_get_from_snapshot_then_later_events(
    event_store: EventStore[UUID], snapshot_store: EventStore[UUID]
) -> None:
    repository: Repository[UUID] = Repository(event_store, snapshot_store=snapshot_store)
    with pytest.raises(AggregateNotFoundError):
        repository.get(uuid4())
    account = stored_account(event_store, "10.00", "25.00", "30.00")
    snapshot_store.put([Snapshot.take(account)])

    read: list[Any] = []

    def spying_projector(aggregate: Any, events: Any) -> Any:
        events = list(events)
        read.extend(events)
        return project_aggregate(aggregate, events)

    assert repository.get(account.id, projector_func=spying_projector) == account
    assert [type(e) for e in read] == [Snapshot]

    # Later events are applied on top of the snapshot.
    account.append_transaction(Decimal("10.00"))
    event_store.put(account.collect_events())
    read.clear()
    copy = repository.get(account.id, projector_func=spying_projector)
    assert copy.balance == Decimal("75.00")
    assert [type(e) for e in read] == [Snapshot, BankAccount.TransactionAppended]

    # Versions before the snapshot are rebuilt from events alone.
    read.clear()
    assert repository.get(account.id, version=3, projector_func=spying_projector).balance == (
        Decimal("35.00")
    )
    assert not any(isinstance(e, Snapshot) for e in read)
    assert repository.get(account.id, version=4).balance == Decimal("65.00")


def test_alternative_projector(event_store: EventStore[UUID]) -> None:
    def tagging_projector(initial: Any, events: Any) -> Any:
        aggregate = project_aggregate(initial, events)
        if aggregate is not None:
            aggregate.__dict__["replayed_by"] = "tagging_projector"
        return aggregate

    repository: Repository[UUID] = Repository(event_store)
    account = stored_account(event_store, "5.00")
    copy = repository.get(account.id, projector_func=tagging_projector)
    assert (copy.balance, copy.replayed_by) == (Decimal("5.00"), "tagging_projector")
    with pytest.raises(AggregateNotFoundError):
        repository.get(account.id, projector_func=lambda _agg, _events: None)


# ---------------------------------------------------------------------------
# Reading with a cache


@pytest.mark.parametrize("maxsize", [0, 2])
def test_cache_is_filled_and_fastforwarded(event_store: EventStore[UUID], maxsize: int) -> None:
    repository: Repository[UUID] = Repository(event_store, cache_maxsize=maxsize)
    assert repository.cache is not None
    aggregate = Aggregate()
    with pytest.raises(AggregateNotFoundError):
        repository.get(aggregate.id)
    event_store.put(aggregate.collect_events())
    assert repository.get(aggregate.id) == aggregate
    cached = repository.cache.get(aggregate.id)

    aggregate.trigger_event(Aggregate.Event)
    event_store.put(aggregate.collect_events())
    assert repository.get(aggregate.id).version == 2
    assert repository.cache.get(aggregate.id) is cached and cached.version == 2
    # A version is always read from the store, and leaves the cache alone.
    assert repository.get(aggregate.id, version=1).version == 1
    assert cached.version == 2


def test_lru_cache_drops_old_aggregates(event_store: EventStore[UUID]) -> None:
    repository: Repository[UUID] = Repository(event_store, cache_maxsize=2)
    assert repository.cache is not None
    aggregates = [Aggregate() for _ in range(3)]
    for aggregate in aggregates:
        event_store.put(aggregate.collect_events())
        repository.get(aggregate.id)
    assert aggregates[0].id not in repository.cache.cache
    assert repository.get(aggregates[0].id).version == 1


def test_cache_without_fastforward_serves_stale_aggregate(event_store: EventStore[UUID]) -> None:
    repository: Repository[UUID] = Repository(event_store, cache_maxsize=2, fastforward=False)
    aggregate = Aggregate()
    event_store.put(aggregate.collect_events())
    assert repository.get(aggregate.id).version == 1
    aggregate.trigger_event(Aggregate.Event)
    event_store.put(aggregate.collect_events())
    assert repository.get(aggregate.id).version == 1
    assert repository._fastforward_locks_inuse == {}


def test_fastforward_projector_returning_none_is_not_found(event_store: EventStore[UUID]) -> None:
    repository: Repository[UUID] = Repository(event_store, cache_maxsize=2)
    aggregate = Aggregate()
    event_store.put(aggregate.collect_events())
    repository.get(aggregate.id)
    with pytest.raises(AggregateNotFoundError):
        repository.get(aggregate.id, projector_func=lambda _agg, _events: None)
    assert repository._fastforward_locks_inuse == {}


def test_deepcopy_from_cache(event_store: EventStore[UUID]) -> None:
    repository: Repository[UUID] = Repository(event_store, cache_maxsize=2)
    assert repository.cache is not None
    aggregate = Aggregate()
    event_store.put(aggregate.collect_events())
    copy = repository.get(aggregate.id)
    assert copy is not repository.cache.get(aggregate.id)
    shared = repository.get(aggregate.id, deepcopy_from_cache=False)
    assert shared is repository.cache.get(aggregate.id)

    no_copies: Repository[UUID] = Repository(
        event_store, cache_maxsize=2, deepcopy_from_cache=False
    )
    assert no_copies.get(aggregate.id) is no_copies.get(aggregate.id)


# An immutable aggregate: each event returns a new object, which must replace the cached one.


@dataclass(frozen=True)
class Counter:
    id: UUID
    version: int
    count: int


class Counted(DomainEvent):
    def mutate(self, counter: Counter | None) -> Counter:
        count = 1 if counter is None else counter.count + 1
        return Counter(self.originator_id, self.originator_version, count)


def count(counter_id: UUID, version: int) -> Counted:
    return Counted(
        originator_id=counter_id,
        originator_version=version,
        timestamp=Counted.create_timestamp(),
    )


def test_cache_of_immutable_aggregates_is_replaced_when_fastforwarded(
    event_store: EventStore[UUID],
) -> None:
    repository: Repository[UUID] = Repository(event_store, cache_maxsize=2)
    assert repository.cache is not None
    counter_id = uuid4()
    event_store.put([count(counter_id, 1)])
    assert repository.get(counter_id) == Counter(counter_id, 1, 1)
    event_store.put([count(counter_id, 2), count(counter_id, 3)])
    assert repository.get(counter_id) == Counter(counter_id, 3, 3)
    assert repository.cache.get(counter_id) == Counter(counter_id, 3, 3)


# ---------------------------------------------------------------------------
# Fast-forward locks


def test_fastforward_lock_bookkeeping(event_store: EventStore[UUID]) -> None:
    repository: Repository[UUID] = Repository(event_store, cache_maxsize=2)
    idle = repository._fastforward_locks_cache
    ids = [uuid4() for _ in range(idle.maxsize + 1)]

    lock = repository._use_fastforward_lock(ids[0])
    assert repository._fastforward_locks_inuse == {ids[0]: (lock, 1)}
    assert len(idle.cache) == 0
    repository._disuse_fastforward_lock(ids[0])
    assert repository._fastforward_locks_inuse == {}
    assert len(idle.cache) == 1

    # Two users share one lock, which is taken back from the idle cache.
    assert repository._use_fastforward_lock(ids[0]) is lock
    assert repository._use_fastforward_lock(ids[0]) is lock
    assert repository._fastforward_locks_inuse[ids[0]][1] == 2
    assert len(idle.cache) == 0
    repository._disuse_fastforward_lock(ids[0])
    assert repository._fastforward_locks_inuse[ids[0]][1] == 1
    repository._disuse_fastforward_lock(ids[0])
    assert repository._fastforward_locks_inuse == {}

    # The idle cache keeps at most FASTFORWARD_LOCKS_CACHE_MAXSIZE locks.
    for aggregate_id in ids:
        repository._use_fastforward_lock(aggregate_id)
    assert len(repository._fastforward_locks_inuse) == len(ids)
    for aggregate_id in ids:
        repository._disuse_fastforward_lock(aggregate_id)
    assert repository._fastforward_locks_inuse == {}
    assert len(idle.cache) == Repository.FASTFORWARD_LOCKS_CACHE_MAXSIZE


def test_concurrent_gets_share_one_cached_aggregate(event_store: EventStore[UUID]) -> None:
    repository: Repository[UUID] = Repository(event_store, cache_maxsize=10)
    assert repository.cache is not None
    aggregate = Aggregate()
    event_store.put(aggregate.collect_events())
    cached = repository.get(aggregate.id, deepcopy_from_cache=False)
    errors: list[BaseException] = []
    versions: list[int] = []

    def reader() -> None:
        try:
            for _ in range(30):
                versions.append(repository.get(aggregate.id).version)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    for _ in range(10):
        aggregate.trigger_event(Aggregate.Event)
        event_store.put(aggregate.collect_events())
    for thread in threads:
        thread.join()

    assert errors == []
    assert repository.get(aggregate.id).version == 11
    assert repository.cache.get(aggregate.id) is cached
    assert repository._fastforward_locks_inuse == {}
    assert all(1 <= v <= 11 for v in versions)
