"""A system: the applications, and which follows which."""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from eventsourcing.application import (
    Application,
    ProgrammingError,
)
from eventsourcing.system.roles import Follower, Leader, ProcessApplication
from eventsourcing.utils import get_topic


class System:
    """The applications of a system, and which follows which.

    Each pipe is a chain of application classes, each following the one before it.
    Applications are identified by their ``name``.
    """

    def __init__(self, pipes: Iterable[Iterable[type[Application[Any]]]]):
        """Define the system; raise TypeError if an application cannot play its role."""
        # Remember where the system was defined, so that `topic` can find it.
        caller = sys._getframe(1)
        self._module_name: str = caller.f_globals.get("__name__", "")
        self._classes: dict[str, type[Application[Any]]] = {}
        self._leader_classes: dict[str, type[Leader[Any]]] = {}
        self.edges: list[tuple[str, str]] = []
        for pipe in pipes:
            previous: str | None = None
            for cls in pipe:
                self._classes.setdefault(cls.name, cls)
                if previous is not None and (previous, cls.name) not in self.edges:
                    self.edges.append((previous, cls.name))
                previous = cls.name
        self.nodes: dict[str, str] = {name: get_topic(c) for name, c in self._classes.items()}
        self.follows: defaultdict[str, list[str]] = defaultdict(list)
        self.leads: defaultdict[str, list[str]] = defaultdict(list)
        for leader_name, follower_name in self.edges:
            self.leads[leader_name].append(follower_name)
            self.follows[follower_name].append(leader_name)
        self.singles = [n for n in self._classes if n not in self.leads and n not in self.follows]
        self._check_roles()

    def _check_roles(self) -> None:
        for name in self.follows:
            if not issubclass(self._classes[name], Follower):
                msg = f"Not a follower class: {self._classes[name]}"
                raise TypeError(msg)
        for name in self.processors:
            if not issubclass(self._classes[name], ProcessApplication):
                msg = f"Not a process application class: {self._classes[name]}"
                raise TypeError(msg)

    @property
    def leaders(self) -> list[str]:
        """The names of the applications that others follow."""
        return list(self.leads)

    @property
    def leaders_only(self) -> list[str]:
        """The names of the applications that lead and do not follow."""
        return [name for name in self.leads if name not in self.follows]

    @property
    def followers(self) -> list[str]:
        """The names of the applications that follow others."""
        return list(self.follows)

    @property
    def processors(self) -> list[str]:
        """The names of the applications that both lead and follow."""
        return [name for name in self.leads if name in self.follows]

    def get_app_cls(self, name: str) -> type[Application[Any]]:
        """Return the application class named ``name``."""
        try:
            return self._classes[name]
        except KeyError:
            msg = f"No application named {name!r} in this system; it has {list(self._classes)}"
            raise KeyError(msg) from None

    def leader_cls(self, name: str) -> type[Leader[Any]]:
        """Return the class named ``name``, made a :class:`Leader` if it is not one.

        A plain application class is extended with :class:`Leader` (once), so an instance is
        still an instance of the class the system was defined with.
        """
        cls = self.get_app_cls(name)
        if issubclass(cls, Leader):
            return cls
        leader_cls = self._leader_classes.get(name)
        if leader_cls is None:
            leader_cls = type(cls.__name__, (Leader, cls), {"name": cls.name})
            self._leader_classes[name] = leader_cls
        return leader_cls

    def follower_cls(self, name: str) -> type[Follower[Any]]:
        """Return the follower class named ``name``."""
        cls = self.get_app_cls(name)
        if not issubclass(cls, Follower):
            msg = f"Not a follower class: {cls}"
            raise TypeError(msg)
        return cls

    @property
    def topic(self) -> str:
        """The topic of this system, when it is assigned to a module attribute.

        Raises :class:`~eventsourcing.application.ProgrammingError` otherwise.
        """
        module = sys.modules.get(self._module_name)
        for attr, value in vars(module).items() if module is not None else ():
            if value is self:
                return f"{self._module_name}:{attr}"
        msg = (
            f"Unable to compute topic for system object: {self} is not assigned to an "
            f"attribute of module {self._module_name!r}; define it at module level"
        )
        raise ProgrammingError(msg)
