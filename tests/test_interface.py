"""The JSON notification-log service and client, over POPO and SQLite applications."""

from __future__ import annotations

import json
from base64 import b64encode
from collections.abc import Iterator, Sequence
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from eventsourcing.application import Application, NotificationLog, Section
from eventsourcing.domain import Aggregate, event
from eventsourcing.interface import (
    NotificationLogInterface,
    NotificationLogJSONClient,
    NotificationLogJSONService,
)
from eventsourcing.persistence import Notification


class Parcel(Aggregate):
    """A parcel that moves between depots."""

    @event("Registered")
    def __init__(self, destination: str) -> None:
        self.destination = destination
        self.depots: list[str] = []

    @event("Arrived")
    def arrive(self, depot: str) -> None:
        self.depots.append(depot)


class Couriers(Application[UUID]):
    """An application with five events in its log once populated."""


@pytest.fixture(params=["popo", "sqlite_file", "sqlite_memory"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Couriers]:
    env = {"PERSISTENCE_MODULE": "eventsourcing.popo"}
    if request.param == "sqlite_file":
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(tmp_path / "couriers.sqlite3"),
        }
    elif request.param == "sqlite_memory":
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": f"file:{uuid4().hex}?mode=memory&cache=shared",
        }
    application = Couriers(env=env)
    parcel = Parcel("Leeds")
    for depot in ("York", "Hull", "Selby"):
        parcel.arrive(depot)
    application.save(parcel, Parcel("Bath"))
    yield application
    application.close()


def test_service_section_json_shape(app: Couriers) -> None:
    service: NotificationLogJSONService[Couriers] = NotificationLogJSONService(app)
    assert isinstance(service, NotificationLogInterface)
    body = json.loads(service.get_log_section("1,2"))
    assert set(body) == {"id", "next_id", "items"}
    assert (body["id"], body["next_id"]) == ("1,2", "3,4")

    local = app.notification_log["1,2"].items[0]
    assert body["items"][0] == {
        "id": 1,
        "originator_id": local.originator_id.hex,
        "originator_version": 1,
        "topic": local.topic,
        "state": b64encode(local.state).decode("utf8"),
    }
    assert len(body["items"][0]["originator_id"]) == 32


def test_service_notifications_json(app: Couriers) -> None:
    service: NotificationLogJSONService[Couriers] = NotificationLogJSONService(app)
    items = json.loads(service.get_notifications(start=2, limit=2))
    assert [item["id"] for item in items] == [2, 3]
    items = json.loads(service.get_notifications(2, 2, inclusive_of_start=False))
    assert [item["id"] for item in items] == [3, 4]
    registered_topic = app.notification_log.select(1, 1)[0].topic
    items = json.loads(service.get_notifications(1, 10, topics=[registered_topic]))
    assert [item["id"] for item in items] == [1, 5]
    assert json.loads(service.get_notifications(start=6, limit=10)) == []


def test_client_reads_the_same_sections_as_the_local_log(app: Couriers) -> None:
    client = NotificationLogJSONClient(NotificationLogJSONService(app))
    assert isinstance(client, NotificationLog)
    for section_id in ("1,10", "2,3", "6,10", "0,9", "1,5"):
        assert client[section_id] == app.notification_log[section_id]
    section = client["1,2"]
    assert isinstance(section, Section)
    assert all(isinstance(n, Notification) for n in section.items)
    assert all(isinstance(n.originator_id, UUID) for n in section.items)


def test_client_select_matches_local_select(app: Couriers) -> None:
    client = NotificationLogJSONClient(NotificationLogJSONService(app))
    assert client.select(1, 10) == list(app.notification_log.select(1, 10))
    assert [n.id for n in client.select(3, 10, inclusive_of_start=False)] == [4, 5]
    topic = app.notification_log.select(2, 1)[0].topic
    assert [n.id for n in client.select(1, 10, topics=[topic])] == [2, 3, 4]
    # The service enforces the section size of the application's log.
    with pytest.raises(ValueError, match="greater than section size 10"):
        client.select(1, 11)


def test_client_rebuilds_events_with_the_application_mapper(app: Couriers) -> None:
    client = NotificationLogJSONClient(NotificationLogJSONService(app))
    events = [app.mapper.to_domain_event(n) for n in client.select(1, 4)]
    parcel = None
    for domain_event in events:
        parcel = domain_event.mutate(parcel)
    assert isinstance(parcel, Parcel)
    assert parcel.depots == ["York", "Hull", "Selby"]


class FixedInterface(NotificationLogInterface):
    """Serves one canned body, as a remote service might."""

    def __init__(self, items: list[dict[str, object]]) -> None:
        self.items = items

    def get_log_section(self, section_id: str) -> str:
        return json.dumps({"id": "1,1", "next_id": None, "items": self.items})

    def get_notifications(
        self,
        start: int | None,
        limit: int,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> str:
        return json.dumps(self.items)


def test_client_keeps_string_ids_that_are_not_uuids() -> None:
    item = {
        "id": 1,
        "originator_id": "account-42",
        "originator_version": 1,
        "topic": "m:T",
        "state": b64encode(b"{}").decode(),
    }
    client = NotificationLogJSONClient(FixedInterface([item]))
    expected = Notification(
        originator_id="account-42", originator_version=1, topic="m:T", state=b"{}", id=1
    )
    assert client.select(1, 1) == [expected]
    assert client["1,1"] == Section(id="1,1", items=[expected], next_id=None)


def test_interface_is_abstract() -> None:
    with pytest.raises(TypeError):
        NotificationLogInterface()  # type: ignore[abstract]
