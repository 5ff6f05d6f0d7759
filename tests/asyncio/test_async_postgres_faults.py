"""The async PostgreSQL recorder under cancellation, server restarts and concurrent writers,
on a real server (stopped and started for real where the plugin started it)."""

from __future__ import annotations

import asyncio
import random
import threading
from typing import Any
from uuid import UUID

import pytest
from async_dogschool import DogSchool, SyncDogSchool
from async_domain import Dog
from psycopg.sql import SQL

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import OperationalError
from runners.testing.fixtures import require_restartable
from runners.testing.postgres import PostgresDatabase

pytestmark = pytest.mark.anyio


def dog_with_tricks(n: int) -> Dog:
    dog = Dog("Fido")
    for i in range(n):
        dog.add_trick(f"trick{i}")
    return dog


async def test_cancelled_saves_leave_nothing_partial_and_the_pool_healthy(
    postgres_env: dict[str, str],
) -> None:
    env = {**postgres_env, "POSTGRES_POOL_SIZE": "2", "POSTGRES_MAX_OVERFLOW": "0"}
    async with DogSchool(env=env) as school:
        # Widen the window between sending a batch and its COMMIT, so cancels land inside.
        sql: Any = school.recorder.sql  # type: ignore[attr-defined]
        sql.before_commit_statements = [SQL("SELECT pg_sleep(0.01)")]
        dogs = [dog_with_tricks(random.choice([0, 5, 100])) for _ in range(60)]
        tasks = [asyncio.create_task(school.save(dog)) for dog in dogs]
        for task in tasks:  # cancel them at scattered moments: queued, sent, committing
            await asyncio.sleep(random.uniform(0, 0.004))
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert any(isinstance(r, asyncio.CancelledError) for r in results)
        sql.before_commit_statements = []
        # Each cancelled save is recorded whole or not at all.
        expected = 0
        for dog in dogs:
            try:
                stored = await school.repository.get(dog.id)
            except AggregateNotFoundError:
                continue
            expected += dog.version
            assert stored.version == dog.version and stored.tricks == dog.tricks
        # The log holds exactly the events of the saves recorded, and the pool is healthy.
        events = 0
        start = 0
        while page := await school.recorder.select_notifications(
            start, 1000, inclusive_of_start=False
        ):
            events += len(page)
            start = page[-1].id
        assert events == expected
        dog_id = await school.register_dog("Rex")
        assert (await school.get_dog(dog_id))["name"] == "Rex"
        stats = school.factory.datastore.stats()  # type: ignore[attr-defined]
        assert stats["pool_size"] == 2 and stats.get("pool_available", 0) == 2


async def test_a_server_restart_under_async_load_loses_no_committed_save(
    postgres_database: PostgresDatabase, postgres_env: dict[str, str]
) -> None:
    server = postgres_database.server
    require_restartable(server)
    env = {**postgres_env, "POSTGRES_CONNECT_TIMEOUT": "20"}
    saved: list[UUID] = []
    failed: list[BaseException] = []
    stop = asyncio.Event()

    async def keep_saving(school: DogSchool) -> None:
        while not stop.is_set():
            try:
                saved.append(await school.register_dog("Fido"))
            except OperationalError as e:
                failed.append(e)

    async with DogSchool(env=env) as school:
        workers = [asyncio.create_task(keep_saving(school)) for _ in range(16)]
        while len(saved) < 50:
            await asyncio.sleep(0.01)
        before = len(saved)
        await asyncio.to_thread(server.restart)
        while len(saved) < before + 50:
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.gather(*workers)
        # Every save that returned is stored, once; none failed (retried through it).
        assert failed == []
        assert len(set(saved)) == len(saved)
        for dog_id in saved:
            assert (await school.get_dog(dog_id))["name"] == "Fido"
        assert await school.recorder.max_notification_id() is not None


async def test_a_subscription_survives_a_server_restart(
    postgres_database: PostgresDatabase, postgres_env: dict[str, str]
) -> None:
    server = postgres_database.server
    require_restartable(server)
    async with DogSchool(env=postgres_env) as school:
        subscription = school.recorder.subscribe(gt=None)
        async with subscription:
            await school.register_dog("Fido")
            assert (await anext(subscription)).id == 1
            await asyncio.to_thread(server.restart)
            await school.register_dog("Rex")
            assert (await asyncio.wait_for(anext(subscription), 20)).id == 2


async def test_a_tail_of_the_log_sees_every_commit_of_sync_and_async_writers_in_order(
    postgres_env: dict[str, str],
) -> None:
    # Notification ids are issued in commit order by both APIs (one table lock): a reader
    # tailing the log by id never skips one that commits later.
    stop = threading.Event()
    sync_saved = []

    def sync_writer() -> None:
        sync_school = SyncDogSchool(env=postgres_env)
        try:
            while not stop.is_set():
                sync_saved.append(sync_school.register_dog("sync"))
        finally:
            sync_school.close()

    async with DogSchool(env=postgres_env) as school:
        await school.open()
        threads = [threading.Thread(target=sync_writer) for _ in range(2)]
        for thread in threads:
            thread.start()
        seen: list[int] = []

        async def tail() -> None:
            async with school.recorder.subscribe(gt=None) as subscription:
                async for notification in subscription:
                    seen.append(notification.id)

        tailer = asyncio.create_task(tail())
        async_saved = await asyncio.gather(*(school.register_dog("async") for _ in range(300)))
        stop.set()
        for thread in threads:
            await asyncio.to_thread(thread.join)
        total = len(async_saved) + len(sync_saved)
        while len(seen) < total:
            await asyncio.sleep(0.01)
        tailer.cancel()
        assert seen == sorted(seen) and len(set(seen)) == len(seen) == total
