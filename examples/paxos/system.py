"""The replicas of a cluster as a System: every replica follows every replica, itself included.

``system`` is a cluster of three replicas, ``Replica0``, ``Replica1`` and ``Replica2``;
:func:`build_system` makes one of any size. Each replica's database is chosen by the
environment under its name (``REPLICA0_SQLITE_DBNAME``, ``REPLICA1_POSTGRES_SCHEMA``, ...),
so the same System runs with every application in one process or each in its own.
"""

from __future__ import annotations

import re
from functools import cache

from eventsourcing.system import System
from examples.paxos.application import Replica


def replica_names(size: int) -> tuple[str, ...]:
    """The names of the replicas of a cluster of ``size``: ``Replica0``, ``Replica1``, ..."""
    if size < 1:
        msg = f"A cluster needs at least one replica, not {size}"
        raise ValueError(msg)
    return tuple(f"Replica{i}" for i in range(size))


@cache
def replica_class(index: int, size: int) -> type[Replica]:
    """The class of replica ``index`` of a cluster of ``size`` (the same class each time)."""
    names = replica_names(size)
    name = names[index]
    # The class's topic, examples.paxos.system:Replica0_of_3, resolves (module __getattr__).
    qualname = f"{name}_of_{size}"
    attributes = {
        "name": name,
        "replica_names": names,
        "__module__": __name__,
        "__qualname__": qualname,
        "__doc__": f"Replica {index} of a cluster of {size}.",
    }
    return type(qualname, (Replica,), attributes)


def __getattr__(attribute: str) -> type[Replica]:
    """Resolve ``ReplicaI_of_N``, the topic of each replica class, to the class."""
    match = re.fullmatch(r"Replica(\d+)_of_(\d+)", attribute)
    if match is None or int(match[1]) >= int(match[2]):
        msg = f"module {__name__!r} has no attribute {attribute!r}"
        raise AttributeError(msg)
    return replica_class(int(match[1]), int(match[2]))


def build_system(size: int = 3) -> System:
    """A System of ``size`` replicas, each following all of them (itself included)."""
    classes = [replica_class(i, size) for i in range(size)]
    return System(pipes=[[leader, follower] for leader in classes for follower in classes])


system = build_system(3)
Replica0 = replica_class(0, 3)
Replica1 = replica_class(1, 3)
Replica2 = replica_class(2, 3)
