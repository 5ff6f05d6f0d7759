"""Dynamic Consistency Boundaries: an event store of typed, tagged events.

An event has a type, bytes of data and any number of string tags. Events are read by a
*query* (types and tags) and appended with a *condition*: fail if any event matching a
query was appended after a given position. That condition is the consistency boundary of
a decision, chosen per decision rather than fixed per aggregate.

* :mod:`eventsourcing.dcb.api`: events, queries, conditions and the recorder interface.
* :mod:`eventsourcing.dcb.domain`: decisions, tags, enduring objects, groups and slices.
* :mod:`eventsourcing.dcb.persistence`: the mapper interface, the event store, the factory.
* :mod:`eventsourcing.dcb.popo`, :mod:`eventsourcing.dcb.sqlite`,
  :mod:`eventsourcing.dcb.postgres_tt`: in-memory, SQLite and PostgreSQL recorders (the
  PostgreSQL schema is that of ``eventsourcing`` 9.5.6).
* :mod:`eventsourcing.dcb.msgpack`: decisions and a mapper using msgspec's MessagePack
  (``pip install 'eventsourcing[msgpack]'``).
* :mod:`eventsourcing.dcb.application`: the application and its repository.
* :mod:`eventsourcing.dcb.subscription`: follow an application's decisions with tracking.
* :mod:`eventsourcing.dcb.tests`: base test cases for recorders.

Importing this package imports nothing else.
"""
