"""The Dog School API example, served for real (uvicorn in a process of its own) and used
with a real HTTP client, on SQLite files and on PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import httpx
import pytest

from examples.dogschool.application import DogSchool as SyncDogSchool

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgres"])
def api_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    if request.param == "sqlite":
        return {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "DOGSCHOOL_SQLITE_DBNAME": str(tmp_path / "dogschool.sqlite"),
            "TRICKTALLIES_SQLITE_DBNAME": str(tmp_path / "tallies.sqlite"),
        }
    database = request.getfixturevalue("postgres_database")
    return {"PERSISTENCE_MODULE": "eventsourcing.postgres", **database.env}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def server(api_env: dict[str, str]) -> Iterator[str]:
    """The API served by ``python -m examples.dogschool_api``; its base URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "examples.dogschool_api", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, **api_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                _, err = process.communicate(timeout=5)
                pytest.fail(f"the API didn't start (exit {process.returncode}): {err}")
            time.sleep(0.05)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, err = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        # A clean stop: the lifespan closed the runner (and its connections); uvicorn then
        # exits by the signal it was sent, for process managers to see.
        assert process.returncode in (0, -signal.SIGTERM), err
        assert "dogschool_api: applications closed" in err


async def test_dogs_registered_over_http_are_tallied_by_the_projection(
    server: str, api_env: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=server, timeout=10) as client:
        # Register dogs and teach them tricks, concurrently.
        responses = await asyncio.gather(
            *(client.post("/dogs", json={"name": f"dog{i}"}) for i in range(20))
        )
        assert {r.status_code for r in responses} == {201}
        dog_ids = [r.json()["id"] for r in responses]
        taught = await asyncio.gather(
            *(client.post(f"/dogs/{d}/tricks", json={"trick": "sit"}) for d in dog_ids),
            *(client.post(f"/dogs/{d}/tricks", json={"trick": "fetch"}) for d in dog_ids[:5]),
        )
        assert {r.status_code for r in taught} == {204}

        dog = await client.get(f"/dogs/{dog_ids[0]}")
        assert dog.json() == {"name": "dog0", "tricks": ["sit", "fetch"]}
        assert (await client.get(f"/dogs/{UUID(int=0)}")).status_code == 404
        bad = await client.post("/dogs", json={"nom": "x"})
        assert bad.status_code == 400 and "name" in bad.json()["error"]
        page = (await client.get("/notifications", params={"start": 1, "limit": 10})).json()
        assert [n["id"] for n in page] == list(range(1, 11))

        # The projection catches up (it follows the school in the server's event loop).
        deadline = time.monotonic() + 20
        while True:
            tallies = [(await client.get(f"/tricks/{t}")).json()["dogs"] for t in ("sit", "fetch")]
            if tallies == [20, 5] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert tallies == [20, 5]

    # The sync Dog School reads what the API wrote (the same tables).
    with SyncDogSchool(env=api_env) as school:
        assert school.get_dog(UUID(dog_ids[10])) == {"name": "dog10", "tricks": ("sit",)}
