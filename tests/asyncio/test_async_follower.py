"""Async followers: coroutine policies, exactly-once processing, sync leaders."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from async_dogschool import Counters, DogSchool, SyncDogSchool, per_app_env, system
from async_domain import Dog

from eventsourcing.application import ProcessingEvent
from eventsourcing.asyncio import AsyncProcessApplication, AsyncRunner, AsyncSystem

pytestmark = pytest.mark.anyio


async def test_a_coroutine_policy_counts_tricks(
    backend_env: dict[str, str], tmp_path: Path
) -> None:
    env = per_app_env(backend_env, str(tmp_path))
    async with AsyncRunner(system, env=env) as runner:
        school = runner.get(DogSchool)
        counters = runner.get(Counters)
        dog_id = await school.register_dog("Fido")
        await school.add_trick(dog_id, "roll over")
        await school.add_trick(dog_id, "play dead")
        await runner.wait("Counters", "DogSchool", 3)
        assert await counters.count(dog_id) == 2
        # Every notification is tracked, the ignored "Registered" event included.
        assert await counters.recorder.max_tracking_id("DogSchool") == 3


async def test_a_backlog_is_processed_in_batches_on_start(
    backend_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**per_app_env(backend_env, str(tmp_path)), "PROCESS_BATCH_SIZE": "7"}
    runner = AsyncRunner(system, env=env)
    await runner.start()
    try:
        school = runner.get(DogSchool)
        dog_ids = [await school.register_dog(f"dog{i}") for i in range(5)]
        for dog_id in dog_ids:
            for trick in ("sit", "stay", "fetch"):
                await school.add_trick(dog_id, trick)
        await runner.wait("Counters", "DogSchool", 20, timeout=10)
        counts = [await runner.get(Counters).count(d) for d in dog_ids]
        assert counts == [3] * 5
    finally:
        await runner.stop()


@pytest.mark.parametrize("backend_env", ["sqlite", "postgres"], indirect=True)
async def test_two_runners_on_one_follower_process_each_event_once(
    backend_env: dict[str, str], tmp_path: Path
) -> None:
    # Given a backlog written by the sync API (mixing the two),
    env = {**per_app_env(backend_env, str(tmp_path)), "PROCESS_BATCH_SIZE": "3"}
    sync_school = SyncDogSchool(env=env)
    dog_ids = [sync_school.register_dog(f"dog{i}") for i in range(4)]
    for _ in range(10):
        for dog_id in dog_ids:
            sync_school.add_trick(dog_id, "trick")
    sync_school.close()
    # when two runners (two processes, as it were) work on the same follower at once,
    async with AsyncRunner(system, env=env) as first, AsyncRunner(system, env=env) as second:
        await asyncio.gather(
            first.wait("Counters", "DogSchool", 44, timeout=20),
            second.wait("Counters", "DogSchool", 44, timeout=20),
        )
        # then each trick was counted exactly once.
        counts = [await first.get(Counters).count(d) for d in dog_ids]
        assert counts == [10] * 4


class FailingCounters(AsyncProcessApplication[UUID]):
    name = "Counters"

    async def policy(self, domain_event: Any, processing_event: ProcessingEvent[UUID]) -> None:
        if isinstance(domain_event, Dog.TrickAdded):
            raise RuntimeError("no tricks today")


failing_system = AsyncSystem(pipes=[[DogSchool, FailingCounters]])


async def test_a_failing_policy_records_nothing_and_stops_the_runner(
    backend_env: dict[str, str], tmp_path: Path
) -> None:
    runner = AsyncRunner(failing_system, env=per_app_env(backend_env, str(tmp_path)))
    await runner.start()
    try:
        school = runner.get(DogSchool)
        dog_id = await school.register_dog("Fido")
        await school.add_trick(dog_id, "sit")
        with pytest.raises(RuntimeError, match="no tricks today") as caught:
            await runner.run_forever()
        assert "Policy of 'Counters' raised while processing notification 2" in "".join(
            caught.value.__notes__
        )
    finally:
        await runner.stop()
    async with FailingCounters(env=per_app_env(backend_env, str(tmp_path))) as counters:
        if backend_env["PERSISTENCE_MODULE"] != "eventsourcing.popo":
            # The "Registered" event may have been processed alone, before: never the trick.
            assert await counters.recorder.max_tracking_id("DogSchool") in (None, 1)
