"""The replicas' protocol, chosen by the setting ``PAXOS_MODE``: basic or multi-Paxos.

``basic`` (the default): every slot runs both phases of Paxos for one command
(:mod:`examples.paxos.domainmodel`). ``multi``: a leader elected once runs phase 2 only, for
batches of commands, several slots at a time (:mod:`examples.paxos.ledger`). Every replica
of a cluster, and its clients, must use the same mode; a database written in one mode is
not read in the other.
"""

from __future__ import annotations

BASIC = "basic"
MULTI = "multi"
MODES = (BASIC, MULTI)
DEFAULT = BASIC
SETTING = "PAXOS_MODE"


def paxos_mode(value: str | None, where: str = SETTING) -> str:
    """The mode named by ``value`` (the default if it is empty), checked."""
    if not value:
        return DEFAULT
    mode = value.strip().lower()
    if mode not in MODES:
        msg = f"Invalid {where} value {value!r}: use one of {', '.join(MODES)}"
        raise ValueError(msg)
    return mode
