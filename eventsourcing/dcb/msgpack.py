"""Decisions as msgspec structs, stored as MessagePack by :class:`MessagePackMapper`.

Needs the msgspec package: ``pip install 'eventsourcing[msgpack]'``. The bytes are
msgspec's encoding of the struct (a map of field names to values), as ``eventsourcing``
9.5.6 stores them, so each library reads the other's events.
"""

from __future__ import annotations

from typing import Any, TypeVar

try:
    import msgspec
except ImportError as e:  # pragma: no cover
    msg = (
        f"eventsourcing.dcb.msgpack needs the msgspec package ({e}); install the extra: "
        "pip install 'eventsourcing[msgpack]'"
    )
    raise ImportError(msg) from e

from eventsourcing.dcb import api, domain, persistence
from eventsourcing.utils import get_topic, resolve_topic

__all__ = ["Decision", "InitialDecision", "MessagePackMapper", "TDecision"]


class Decision(msgspec.Struct, domain.Decision):
    """A decision whose fields are declared as struct fields (class annotations)."""

    def as_dict(self) -> dict[str, Any]:
        """Return the decision's fields."""
        return {key: getattr(self, key) for key in self.__struct_fields__}


TDecision = TypeVar("TDecision", bound=Decision)


class InitialDecision(Decision, domain.InitialDecision):
    """The decision that starts an enduring object (see the domain's InitialDecision)."""

    originator_topic: str


class MessagePackMapper(persistence.DCBMapper[Decision]):
    """Stores a decision as its MessagePack encoding, with its class's topic as the type."""

    def __init__(self) -> None:
        self._encode = msgspec.msgpack.Encoder().encode
        # One decoder per decision class: building a decoder is costly, using one cheap.
        self._decoders: dict[type[Any], msgspec.msgpack.Decoder[Any]] = {}

    def to_dcb_event(self, event: domain.Tagged[TDecision]) -> api.DCBEvent:
        """Encode a tagged decision."""
        return api.DCBEvent(
            type=get_topic(type(event.decision)),
            data=self._encode(event.decision),
            tags=event.tags,
        )

    def to_domain_event(self, event: api.DCBEvent) -> domain.Tagged[Decision]:
        """Decode a stored event into a tagged decision of the class its type names."""
        decision_cls = resolve_topic(event.type)
        try:
            decode = self._decoders[decision_cls].decode
        except KeyError:
            decoder = msgspec.msgpack.Decoder(decision_cls)
            self._decoders[decision_cls] = decoder
            decode = decoder.decode
        return domain.Tagged(tags=event.tags, decision=decode(event.data))
