"""The async application behaves as the sync one, on every backend."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import pytest
from async_dogschool import DogSchool
from async_domain import Dog

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError

pytestmark = pytest.mark.anyio


async def test_commands_queries_and_the_notification_log(backend_env: dict[str, str]) -> None:
    async with DogSchool(env=backend_env) as school:
        dog_id = await school.register_dog("Fido")
        await school.add_trick(dog_id, "roll over")
        await school.add_trick(dog_id, "play dead")

        assert await school.get_dog(dog_id) == {
            "name": "Fido",
            "tricks": ("roll over", "play dead"),
        }
        notifications = await school.notification_log.select(start=1, limit=10)
        assert [n.id for n in notifications] == [1, 2, 3]
        assert [n.originator_id for n in notifications] == [dog_id] * 3
        assert await school.recorder.max_notification_id() == 3


async def test_get_at_a_version_and_missing_aggregates(backend_env: dict[str, str]) -> None:
    async with DogSchool(env=backend_env) as school:
        dog_id = await school.register_dog("Fido")
        await school.add_trick(dog_id, "sit")
        await school.add_trick(dog_id, "stay")
        dog = await school.repository.get(dog_id, version=2)
        assert (dog.version, dog.tricks) == (2, ["sit"])
        with pytest.raises(AggregateNotFoundError):
            await school.repository.get(uuid4())
        assert await school.repository.contains(dog_id)
        assert not await school.repository.contains(uuid4())


async def test_a_version_conflict_records_nothing(backend_env: dict[str, str]) -> None:
    async with DogSchool(env=backend_env) as school:
        dog_id = await school.register_dog("Fido")
        first = await school.repository.get(dog_id)
        second = await school.repository.get(dog_id)
        first.add_trick("sit")
        await school.save(first)
        second.add_trick("stay")
        with pytest.raises(IntegrityError):
            await school.save(second)
        assert (await school.get_dog(dog_id))["tricks"] == ("sit",)
        assert await school.recorder.max_notification_id() == 2


async def test_sections_of_the_notification_log(backend_env: dict[str, str]) -> None:
    async with DogSchool(env=backend_env) as school:
        for name in ("a", "b", "c"):
            await school.register_dog(name)
        section = await school.notification_log["1,2"]
        assert (section.id, section.next_id) == ("1,2", "3,4")
        assert [n.id for n in section.items] == [1, 2]
        last = await school.notification_log["3,4"]
        assert (last.id, last.next_id) == ("3,3", None)
        with pytest.raises(ValueError, match="greater than section size"):
            await school.notification_log.select(1, 11)


async def test_concurrent_saves_each_get_their_ids(backend_env: dict[str, str]) -> None:
    async with DogSchool(env=backend_env) as school:
        ids = await asyncio.gather(*(school.register_dog(f"dog{i}") for i in range(50)))
        notifications = await school.notification_log.select(start=1, limit=10)
        assert len(notifications) == 10
        assert await school.recorder.max_notification_id() == 50
        all_ids = []
        start = 1
        while page := await school.notification_log.select(start=start, limit=10):
            all_ids.extend(n.originator_id for n in page)
            start = page[-1].id + 1
        assert sorted(map(str, all_ids)) == sorted(map(str, ids))


async def test_concurrent_conflicting_saves_fail_alone(backend_env: dict[str, str]) -> None:
    async with DogSchool(env=backend_env) as school:
        dog_id = await school.register_dog("Fido")
        copies = [await school.repository.get(dog_id) for _ in range(5)]
        for i, dog in enumerate(copies):
            dog.add_trick(f"trick{i}")
        others = [Dog(f"other{i}") for i in range(5)]
        results = await asyncio.gather(
            *(school.save(d) for d in [*copies, *others]), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        assert len(failures) == 4 and all(isinstance(f, IntegrityError) for f in failures)
        assert await school.recorder.max_notification_id() is not None
        for other in others:
            assert (await school.repository.get(other.id)).name == other.name
        assert len((await school.repository.get(dog_id)).tricks) == 1


async def test_snapshots(backend_env: dict[str, str]) -> None:
    class SnapshottingSchool(DogSchool):
        name = "DogSchool"
        snapshotting_intervals = {Dog: 2}

    async with SnapshottingSchool(env=backend_env) as school:
        dog_id = await school.register_dog("Rex")
        await school.add_trick(dog_id, "sit")  # version 2: a snapshot is taken
        await school.add_trick(dog_id, "stay")
        assert school.snapshots is not None
        snapshots = list(await school.snapshots.get(dog_id))
        assert [s.originator_version for s in snapshots] == [2]
        assert (await school.get_dog(dog_id))["tricks"] == ("sit", "stay")
        await school.take_snapshot(dog_id)
        versions = [s.originator_version for s in await school.snapshots.get(dog_id)]
        assert versions == [2, 3]


async def test_aggregate_cache_fast_forwards(backend_env: dict[str, str]) -> None:
    env = {**backend_env, "AGGREGATE_CACHE_MAXSIZE": "10"}
    async with DogSchool(env=env) as school, DogSchool(env=env) as other:
        dog_id = await school.register_dog("Fido")
        await school.get_dog(dog_id)  # cached
        # Another instance writes (POPO: the same one, the others share nothing).
        writer = school if backend_env["PERSISTENCE_MODULE"] == "eventsourcing.popo" else other
        await writer.add_trick(dog_id, "sit")
        # Concurrent gets fast-forward the cached copy once: each sees one trick.
        tricks = await asyncio.gather(*(school.get_dog(dog_id) for _ in range(3)))
        assert all(t["tricks"] == ("sit",) for t in tricks)
