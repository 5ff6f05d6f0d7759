"""Run DCB operations on PostgreSQL, with whichever ``eventsourcing`` this interpreter has.

The compatibility tests run it under 9.5.6's interpreter and under ours, on one database.
Usage: ``python dcb_client.py NAME OPS_JSON`` with the ``POSTGRES_*`` settings (and
``CREATE_TABLE``) in the environment; prints one JSON result per operation:

* ``{"op": "append", "events": [[type, data_hex, tags], ...], "condition": null or
  {"items": [[types, tags], ...], "after": n}}`` gives ``{"position": n}`` or
  ``{"error": "IntegrityError"}``;
* ``{"op": "read", "items": [[types, tags], ...], "after": n, "limit": n}`` gives
  ``{"events": [[position, type, data_hex, tags], ...], "head": n}``;
* ``{"op": "save_dog", "name": ..., "tricks": [...]}`` saves an enduring object with the
  msgpack mapper and gives ``{"id": ...}``; ``{"op": "get_dog", "id": ...}`` gives
  ``{"name": ..., "tricks": [...]}``, and ``{"op": "add_trick", "id": ..., "trick": ...}``
  adds one (``{"position": n}`` or ``{"error": "IntegrityError"}`` from a stale copy).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from eventsourcing.dcb.api import DCBAppendCondition, DCBEvent, DCBQuery, DCBQueryItem
from eventsourcing.dcb.application import DCBApplication
from eventsourcing.dcb.domain import EnduringObject
from eventsourcing.dcb.msgpack import Decision, InitialDecision, MessagePackMapper
from eventsourcing.domain import event
from eventsourcing.persistence import IntegrityError
from eventsourcing.utils import get_topic


class Dog(EnduringObject[Decision, str]):
    """An enduring object whose decisions either library decodes."""

    class Registered(InitialDecision):
        dog_id: str
        name: str

    @event(Registered)
    def __init__(self, *, name: str) -> None:
        self.name = name
        self.tricks: list[str] = []

    class TrickAdded(Decision):
        trick: str

    @event(TrickAdded)
    def add_trick(self, trick: str) -> None:
        self.tricks.append(trick)


# Both interpreters run this file as __main__, so the topics ("__main__:Dog.Registered"...)
# are the same for both.


def query(items: list[list[list[str]]]) -> DCBQuery:
    return DCBQuery(items=[DCBQueryItem(types=types, tags=tags) for types, tags in items])


def run(app: DCBApplication, op: dict[str, Any], stale: dict[str, Dog]) -> dict[str, Any]:
    kind = op["op"]
    try:
        if kind == "append":
            events = [DCBEvent(t, bytes.fromhex(d), tags) for t, d, tags in op["events"]]
            cond = op.get("condition")
            condition = (
                None
                if cond is None
                else DCBAppendCondition(query(cond["items"]), after=cond["after"])
            )
            return {"position": app.recorder.append(events, condition)}
        if kind == "read":
            response = app.recorder.read(
                query(op.get("items", [])), after=op.get("after"), limit=op.get("limit")
            )
            events = [
                [e.position, e.event.type, e.event.data.hex(), e.event.tags] for e in response
            ]
            return {"events": events, "head": response.head}
        if kind == "save_dog":
            dog = Dog(name=op["name"])
            for trick in op["tricks"]:
                dog.add_trick(trick)
            app.repository.save(dog)
            return {"id": dog.id}
        if kind == "get_dog":
            dog = app.repository.get(op["id"])  # type: ignore[assignment]
            stale[op["id"]] = dog
            return {"name": dog.name, "tricks": dog.tricks, "position": dog.last_known_position}
        if kind == "add_trick":
            dog = stale.get(op["id"]) or app.repository.get(op["id"])  # type: ignore[assignment]
            dog.add_trick(op["trick"])
            return {"position": app.repository.save(dog)}
    except IntegrityError:
        return {"error": "IntegrityError"}
    raise ValueError(kind)


def main() -> None:
    name, ops = sys.argv[1], json.loads(sys.argv[2])
    env = {
        **os.environ,
        "PERSISTENCE_MODULE": "eventsourcing.dcb.postgres_tt",
        "MAPPER_TOPIC": get_topic(MessagePackMapper),
    }
    app = type(name, (DCBApplication,), {})(env)
    stale: dict[str, Dog] = {}
    try:
        for op in ops:
            print(json.dumps(run(app, op, stale)))
    finally:
        app.close()


if __name__ == "__main__":
    main()
