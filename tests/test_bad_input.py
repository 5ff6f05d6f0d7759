"""Bad input, seen from an application: each mistake gets an error that names the problem and
the fix, and nothing is half-written."""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

import pytest

from eventsourcing.application import Application
from eventsourcing.cipher import AESCipher
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import (
    InfrastructureFactoryError,
    IntegrityError,
    MapperDeserialisationError,
    TranscodingNotRegisteredError,
)


class Dog(Aggregate):
    @event("Registered")
    def __init__(self, name: str) -> None:
        self.name = name
        self.tricks: list[object] = []

    @event("TrickAdded")
    def add_trick(self, trick: object) -> None:
        self.tricks.append(trick)


@pytest.fixture(params=["popo", "sqlite"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    if request.param == "popo":
        return {"PERSISTENCE_MODULE": "eventsourcing.popo"}
    return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(tmp_path / "db")}


def test_unknown_persistence_module_names_the_value_and_the_variable() -> None:
    with pytest.raises(InfrastructureFactoryError) as error:
        Application(env={"PERSISTENCE_MODULE": "eventsourcing.mongo"})
    assert str(error.value) == (
        "Failed to resolve persistence module topic: 'eventsourcing.mongo' "
        "from environment variable 'PERSISTENCE_MODULE'"
    )


def test_missing_sqlite_dbname_names_the_keys_to_set() -> None:
    with pytest.raises(OSError, match="SQLite database name not found") as error:
        Application(env={"PERSISTENCE_MODULE": "eventsourcing.sqlite"})
    assert "APPLICATION_SQLITE_DBNAME, SQLITE_DBNAME" in str(error.value)


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        (AESCipher.create_key(16)[:-4] + "AAA=", "Invalid key size"),
        ("not base64 at all!", "not valid base64"),
    ],
)
def test_bad_cipher_key_says_what_is_wrong_and_how_to_make_one(key: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as error:
        Application(env={"CIPHER_KEY": key})
    assert "create_key(32)" in str(error.value)
    assert key not in str(error.value)  # a secret is never echoed


def test_wrong_key_on_read_names_the_event(tmp_path: Path) -> None:
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(tmp_path / "db")}
    app = Application(env={**env, "CIPHER_KEY": AESCipher.create_key(32)})
    dog = Dog("Fido")
    app.save(dog)
    app.close()
    other = Application(env={**env, "CIPHER_KEY": AESCipher.create_key(32)})
    with pytest.raises(MapperDeserialisationError) as error:
        other.repository.get(dog.id)
    message = str(error.value)
    assert f"originator_id '{dog.id}'" in message and "originator_version 1" in message
    assert isinstance(error.value, ValueError)


def test_corrupt_record_is_reported_not_skipped(env: dict[str, str]) -> None:
    app = Application(env={**env, "COMPRESSOR_TOPIC": "zlib"})
    dog = Dog("Fido")
    dog.add_trick("sit")
    app.save(dog)
    stored = app.recorder.select_events(dog.id)
    tampered = type(stored[1])(stored[1].originator_id, 2, stored[1].topic, b"garbage")
    with pytest.raises(MapperDeserialisationError, match="originator_version 2"):
        app.mapper.to_domain_event(tampered)
    assert app.mapper.to_domain_event(stored[1]).trick == "sit"


def test_unregistered_type_fails_the_save_and_writes_nothing(env: dict[str, str]) -> None:
    app = Application(env=env)
    dog = Dog("Fido")
    dog.add_trick(object())
    with pytest.raises(TranscodingNotRegisteredError, match="register a custom transcoding"):
        app.save(dog)
    assert app.recorder.select_events(dog.id) == []
    assert app.recorder.max_notification_id() is None


def test_version_conflict_rejects_the_whole_batch(env: dict[str, str]) -> None:
    app = Application(env=env)
    dog = Dog("Fido")
    app.save(dog)
    stale = app.repository.get(dog.id)
    fresh = app.repository.get(dog.id)
    fresh.add_trick("sit")
    app.save(fresh)
    newcomer = Dog("Rex")
    stale.add_trick("stay")
    with pytest.raises(IntegrityError):
        app.save(newcomer, stale)  # one batch: the new dog must not be written either
    assert app.recorder.select_events(newcomer.id) == []
    assert app.repository.get(dog.id).tricks == ["sit"]
    assert app.recorder.max_notification_id() == 2
    assert uuid4() not in app.repository
