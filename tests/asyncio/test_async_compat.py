"""Storage compatibility: what the async API writes, the sync API and eventsourcing 9.5.6
read, and the reverse; on SQLite files and PostgreSQL, with compression and encryption."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from uuid import UUID

import pytest
from anchor import anchor_python
from async_dogschool import DogSchool, SyncDogSchool

from eventsourcing.cipher import AESCipher

pytestmark = pytest.mark.anyio

HERE = Path(__file__).parent

# Run by eventsourcing 9.5.6: "write NAME" records a dog with two tricks and prints its id;
# "read" prints every dog of the log, and the notification ids.
ANCHOR_SCRIPT = """
import json, sys
from eventsourcing.application import Application
from async_domain import Dog

class DogSchool(Application):
    pass

app = DogSchool()
if sys.argv[1] == "write":
    dog = Dog(sys.argv[2])
    dog.add_trick("sit")
    dog.add_trick("stay")
    app.save(dog)
    print(json.dumps(str(dog.id)))
else:
    ids = [n.id for n in app.notification_log.select(1, 10)]
    dogs = {}
    for n in app.notification_log.select(1, 10):
        dog = app.repository.get(n.originator_id)
        dogs[str(dog.id)] = [dog.name, dog.tricks]
    print(json.dumps({"ids": ids, "dogs": dogs}))
"""


@pytest.fixture(scope="module")
def anchor() -> Path:
    return anchor_python()


@pytest.fixture(params=["sqlite", "postgres"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    secure = {
        "COMPRESSOR_TOPIC": "eventsourcing.compressor:ZlibCompressor",
        "CIPHER_KEY": AESCipher.create_key(num_bytes=32),
    }
    if request.param == "sqlite":
        db = str(tmp_path / "dogs.sqlite")
        return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": db, **secure}
    database = request.getfixturevalue("postgres_database")
    return {"PERSISTENCE_MODULE": "eventsourcing.postgres", **database.env, **secure}


def run_anchor(anchor: Path, env: dict[str, str], tmp_path: Path, *args: str) -> object:
    script = tmp_path / "anchor_dogschool.py"
    script.write_text(ANCHOR_SCRIPT)
    result = subprocess.run(
        [str(anchor), str(script), *args],
        env={**os.environ, **env, "PYTHONPATH": str(HERE)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def test_what_async_writes_sync_and_9_5_6_read(
    anchor: Path, store_env: dict[str, str], tmp_path: Path
) -> None:
    async with DogSchool(env=store_env) as school:
        dog_id = await school.register_dog("Fido")
        await school.add_trick(dog_id, "roll over")
        await school.add_trick(dog_id, "play dead")

    sync_school = SyncDogSchool(env=store_env)
    try:
        assert sync_school.get_dog(dog_id) == {
            "name": "Fido",
            "tricks": ("roll over", "play dead"),
        }
    finally:
        sync_school.close()
    read = run_anchor(anchor, store_env, tmp_path, "read")
    assert read == {"ids": [1, 2, 3], "dogs": {str(dog_id): ["Fido", ["roll over", "play dead"]]}}


async def test_what_sync_and_9_5_6_write_async_reads(
    anchor: Path, store_env: dict[str, str], tmp_path: Path
) -> None:
    sync_school = SyncDogSchool(env=store_env)
    try:
        ours = sync_school.register_dog("Rex")
        sync_school.add_trick(ours, "sit")
    finally:
        sync_school.close()
    theirs = UUID(str(run_anchor(anchor, store_env, tmp_path, "write", "Lassie")))

    async with DogSchool(env=store_env) as school:
        assert await school.get_dog(ours) == {"name": "Rex", "tricks": ("sit",)}
        assert await school.get_dog(theirs) == {"name": "Lassie", "tricks": ("sit", "stay")}
        notifications = await school.notification_log.select(1, 10)
        assert [n.id for n in notifications] == [1, 2, 3, 4, 5]
        # And the async API goes on where they left off, in the same sequence.
        await school.add_trick(theirs, "fetch")
        assert await school.recorder.max_notification_id() == 6
    read = run_anchor(anchor, store_env, tmp_path, "read")
    assert read["dogs"][str(theirs)] == ["Lassie", ["sit", "stay", "fetch"]]  # type: ignore[index]
