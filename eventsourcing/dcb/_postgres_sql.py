"""The SQL of the PostgreSQL DCB recorder: 9.5.6's ``postgres_tt`` schema, and our statements.

The schema is that of ``eventsourcing`` 9.5.6, so that either library reads and appends
to a database the other wrote:

* composite types ``dcb_event_tt(type, data, tags)`` and ``dcb_query_item_tt(types, tags)``;
* a main table ``<prefix>_events_tt_main(id bigserial, type, data, tags)`` with a unique
  index on ``id`` that includes ``type``;
* a tag table ``<prefix>_events_tt_tag(tag, main_id)``, one row per tag of each event,
  indexed on ``(tag, main_id)``;
* functions ``dcb_unconditional_append_tt(events)`` and
  ``dcb_conditional_append_tt(query_items, after_id, events)``, which 9.5.6 clients call.

Our own appends call one function per main table (``<main table>_append``) that takes the
events and the condition as flat arrays with offsets (no composite values to build or
register on each connection). 9.5.6's two functions are created as wrappers of it, so
that both libraries append under the same rules: the main table is locked in EXCLUSIVE
mode (conflicting appends take turns, reads go on), the condition is checked with a
snapshot taken after the lock, events and tags are inserted, and a NOTIFY is sent on the
channel named after the main table.

Ragged lists (the tags of each event, the types and tags of each query item) are passed
as one flat array and an array of ``n + 1`` offsets: item ``i`` has
``flat[bounds[i] + 1 : bounds[i + 1]]``.
"""

from __future__ import annotations

from psycopg.sql import SQL, Composed
from psycopg.sql import Literal as SQLLiteral

from eventsourcing.postgres.identifiers import quoted

DB_TYPE_NAME_DCB_EVENT_TT = "dcb_event_tt"
DB_TYPE_NAME_DCB_QUERY_ITEM_TT = "dcb_query_item_tt"
DB_FUNCTION_NAME_DCB_UNCONDITIONAL_APPEND_TT = "dcb_unconditional_append_tt"
DB_FUNCTION_NAME_DCB_CONDITIONAL_APPEND_TT = "dcb_conditional_append_tt"

_TABLE_OPTIONS = (
    "WITH (autovacuum_enabled = true, autovacuum_vacuum_threshold = 100000000, "
    "autovacuum_vacuum_scale_factor = 0.5, autovacuum_analyze_threshold = 1000, "
    "autovacuum_analyze_scale_factor = 0.01)"
)


class DCBStatements:
    """Every statement of one recorder, formatted once with its schema and table names."""

    def __init__(
        self,
        *,
        schema: str,
        events_table: str,
        tags_table: str,
        id_type_index: str,
        tag_main_id_index: str,
        channel: str,
        append_function: str,
        lock_timeout: int,
    ) -> None:
        self.names = {
            "schema": quoted(schema),
            "main": SQL("{}.{}").format(quoted(schema), quoted(events_table)),
            "tag": SQL("{}.{}").format(quoted(schema), quoted(tags_table)),
            "id_type_index": quoted(id_type_index),
            "tag_main_id_index": quoted(tag_main_id_index),
            "channel": quoted(channel),
            "append": SQL("{}.{}").format(quoted(schema), quoted(append_function)),
            "event_type": SQL("{}.{}").format(quoted(schema), quoted(DB_TYPE_NAME_DCB_EVENT_TT)),
            "item_type": SQL("{}.{}").format(
                quoted(schema), quoted(DB_TYPE_NAME_DCB_QUERY_ITEM_TT)
            ),
            "unconditional": SQL("{}.{}").format(
                quoted(schema), quoted(DB_FUNCTION_NAME_DCB_UNCONDITIONAL_APPEND_TT)
            ),
            "conditional": SQL("{}.{}").format(
                quoted(schema), quoted(DB_FUNCTION_NAME_DCB_CONDITIONAL_APPEND_TT)
            ),
            "lock_timeout": SQLLiteral(f"{lock_timeout}s"),
            "options": SQL(_TABLE_OPTIONS),
        }
        self.append = self._format(_APPEND_CALL)
        self.read_all = self._format(_READ_ALL)
        self.read_tagged = self._format(_READ_TAGGED)
        self.read_typed = self._format(_READ_TYPED)
        self.read_mixed = self._format(_READ_MIXED)
        self.with_head = {
            "all": self._with_head(_READ_ALL),
            "tagged": self._with_head(_READ_TAGGED),
            "typed": self._with_head(_READ_TYPED),
            "mixed": self._with_head(_READ_MIXED),
        }
        self.without_head = {
            "all": self.read_all,
            "tagged": self.read_tagged,
            "typed": self.read_typed,
            "mixed": self.read_mixed,
        }

    def _format(self, template: str) -> Composed:
        return SQL(template).format(**self.names)

    def _with_head(self, template: str) -> Composed:
        # One statement, one snapshot: the head and the events are read together.
        return SQL(_WITH_HEAD).format(
            selected=SQL(template).format(**self.names),
            **self.names,
        )

    def create_statements(self) -> list[Composed]:
        """The statements that create the schema's types, tables, indexes and functions."""
        return [
            self._format(_CREATE_EVENT_TYPE),
            self._format(_CREATE_QUERY_ITEM_TYPE),
            self._format(_CREATE_MAIN_TABLE),
            self._format(_CREATE_ID_TYPE_INDEX),
            self._format(_CREATE_TAG_TABLE),
            self._format(_CREATE_TAG_INDEX),
            self._format(_CREATE_APPEND_FUNCTION),
            self._format(_CREATE_UNCONDITIONAL_FUNCTION),
            self._format(_CREATE_CONDITIONAL_FUNCTION),
        ]


_CREATE_EVENT_TYPE = "CREATE TYPE {event_type} AS (type text, data bytea, tags text[])"
_CREATE_QUERY_ITEM_TYPE = "CREATE TYPE {item_type} AS (types text[], tags text[])"
_CREATE_MAIN_TABLE = (
    "CREATE TABLE IF NOT EXISTS {main} "
    "(id bigserial, type text NOT NULL, data bytea, tags text[] NOT NULL) {options}"
)
_CREATE_ID_TYPE_INDEX = (
    "CREATE UNIQUE INDEX IF NOT EXISTS {id_type_index} ON {main} (id) INCLUDE (type)"
)
_CREATE_TAG_TABLE = (
    "CREATE TABLE IF NOT EXISTS {tag} (tag text, main_id bigint REFERENCES {main} (id)) {options}"
)
_CREATE_TAG_INDEX = "CREATE INDEX IF NOT EXISTS {tag_main_id_index} ON {tag} (tag, main_id)"

# Returns the last new id, or NULL if the condition failed (nothing is then inserted).
_CREATE_APPEND_FUNCTION = """
CREATE OR REPLACE FUNCTION {append}(
    check_condition boolean,
    after_id bigint,
    item_type_bounds int[],
    item_types text[],
    item_tag_bounds int[],
    item_tags text[],
    event_types text[],
    event_data bytea[],
    event_tag_bounds int[],
    event_tags text[]
) RETURNS bigint LANGUAGE plpgsql AS $BODY$
DECLARE
    after bigint := COALESCE(after_id, 0);
    types_i text[];
    tags_i text[];
    last_id bigint;
BEGIN
    SET LOCAL lock_timeout = {lock_timeout};
    -- Appends take turns (ids are committed in order, so readers never skip one), and
    -- the condition below is read with a snapshot taken once earlier appends committed.
    LOCK TABLE {main} IN EXCLUSIVE MODE;
    IF check_condition THEN
        IF cardinality(item_type_bounds) < 2 THEN
            -- A condition without query items fails on any event after the position.
            IF EXISTS (SELECT 1 FROM {main} m WHERE m.id > after) THEN
                RETURN NULL;
            END IF;
        END IF;
        FOR i IN 1 .. cardinality(item_type_bounds) - 1 LOOP
            types_i := item_types[item_type_bounds[i] + 1 : item_type_bounds[i + 1]];
            tags_i := item_tags[item_tag_bounds[i] + 1 : item_tag_bounds[i + 1]];
            IF cardinality(tags_i) = 0 THEN
                IF EXISTS (
                    SELECT 1 FROM {main} m
                    WHERE m.id > after AND (cardinality(types_i) = 0 OR m.type = ANY(types_i))
                ) THEN
                    RETURN NULL;
                END IF;
            ELSIF EXISTS (
                -- Candidates by the item's first tag (indexed), then all its tags and types.
                SELECT 1 FROM {tag} t JOIN {main} m ON m.id = t.main_id
                WHERE t.tag = tags_i[1] AND t.main_id > after AND m.tags @> tags_i
                AND (cardinality(types_i) = 0 OR m.type = ANY(types_i))
            ) THEN
                RETURN NULL;
            END IF;
        END LOOP;
    END IF;
    WITH inserted AS (
        INSERT INTO {main} (type, data, tags)
        SELECT e.type, e.data, event_tags[event_tag_bounds[e.n] + 1 : event_tag_bounds[e.n + 1]]
        FROM unnest(event_types, event_data) WITH ORDINALITY AS e(type, data, n)
        ORDER BY e.n
        RETURNING id, tags
    ), tagged AS (
        INSERT INTO {tag} (tag, main_id)
        SELECT tag, inserted.id FROM inserted, unnest(inserted.tags) AS tag
    )
    SELECT max(id) INTO last_id FROM inserted;
    NOTIFY {channel};
    RETURN last_id;
END
$BODY$
"""

# 9.5.6 clients call these two with composite arrays; they flatten them and call ours.
_FLATTEN_EVENTS = """
    SELECT
        COALESCE(array_agg(e.type ORDER BY e.n), '{{}}'),
        COALESCE(array_agg(e.data ORDER BY e.n), '{{}}'),
        array_prepend(0, COALESCE(array_agg(e.upto ORDER BY e.n), '{{}}')),
        ARRAY(
            SELECT tag FROM unnest(new_events) WITH ORDINALITY AS f(type, data, tags, n),
            unnest(f.tags) WITH ORDINALITY AS g(tag, k) ORDER BY f.n, g.k
        )
    INTO event_types, event_data, event_tag_bounds, event_tags
    FROM (
        SELECT u.type, u.data, u.n,
            (sum(COALESCE(cardinality(u.tags), 0)) OVER (ORDER BY u.n))::int AS upto
        FROM unnest(new_events) WITH ORDINALITY AS u(type, data, tags, n)
    ) e;
"""

_CREATE_UNCONDITIONAL_FUNCTION = (
    """
CREATE OR REPLACE FUNCTION {unconditional}(new_events {event_type}[])
RETURNS SETOF bigint LANGUAGE plpgsql AS $BODY$
DECLARE
    event_types text[];
    event_data bytea[];
    event_tag_bounds int[];
    event_tags text[];
BEGIN
"""
    + _FLATTEN_EVENTS
    + """
    RETURN QUERY SELECT {append}(
        false, NULL, '{{}}', '{{}}', '{{}}', '{{}}',
        event_types, event_data, event_tag_bounds, event_tags
    );
END
$BODY$
"""
)

_CREATE_CONDITIONAL_FUNCTION = (
    """
CREATE OR REPLACE FUNCTION {conditional}(
    query_items {item_type}[], after_id bigint, new_events {event_type}[]
) RETURNS SETOF bigint LANGUAGE plpgsql AS $BODY$
DECLARE
    event_types text[];
    event_data bytea[];
    event_tag_bounds int[];
    event_tags text[];
    item_type_bounds int[];
    item_types text[];
    item_tag_bounds int[];
    item_tags text[];
    last_id bigint;
BEGIN
"""
    + _FLATTEN_EVENTS
    + """
    SELECT
        array_prepend(0, COALESCE(array_agg(q.types_upto ORDER BY q.n), '{{}}')),
        ARRAY(
            SELECT t FROM unnest(query_items) WITH ORDINALITY AS f(types, tags, n),
            unnest(f.types) WITH ORDINALITY AS g(t, k) ORDER BY f.n, g.k
        ),
        array_prepend(0, COALESCE(array_agg(q.tags_upto ORDER BY q.n), '{{}}')),
        ARRAY(
            SELECT t FROM unnest(query_items) WITH ORDINALITY AS f(types, tags, n),
            unnest(f.tags) WITH ORDINALITY AS g(t, k) ORDER BY f.n, g.k
        )
    INTO item_type_bounds, item_types, item_tag_bounds, item_tags
    FROM (
        SELECT u.n,
            (sum(COALESCE(cardinality(u.types), 0)) OVER (ORDER BY u.n))::int AS types_upto,
            (sum(COALESCE(cardinality(u.tags), 0)) OVER (ORDER BY u.n))::int AS tags_upto
        FROM unnest(query_items) WITH ORDINALITY AS u(types, tags, n)
    ) q;
    last_id := {append}(
        true, after_id, item_type_bounds, item_types, item_tag_bounds, item_tags,
        event_types, event_data, event_tag_bounds, event_tags
    );
    IF last_id IS NOT NULL THEN
        RETURN NEXT last_id;
    END IF;
    RETURN;
END
$BODY$
"""
)

_APPEND_CALL = (
    "SELECT {append}(%s::boolean, %s::bigint, %s::int[], %s::text[], %s::int[], %s::text[], "
    "%s::text[], %s::bytea[], %s::int[], %s::text[])"
)

# Reads. Parameters: after, limit (NULL for none), and per shape the query's arrays.
_READ_ALL = (
    "SELECT m.id, m.type, m.data, m.tags FROM {main} m WHERE m.id > %(after)s "
    "ORDER BY m.id LIMIT %(limit)s"
)

# Items with tags: candidates by each item's first tag, then all its tags and its types.
_TAGGED_CANDIDATES = """
    SELECT t.main_id FROM generate_series(1, %(n_items)s) AS i
    CROSS JOIN LATERAL (SELECT
        (%(item_tags)s::text[])[(%(tag_bounds)s::int[])[i] + 1 : (%(tag_bounds)s::int[])[i + 1]]
            AS tags,
        (%(item_types)s::text[])[(%(type_bounds)s::int[])[i] + 1 : (%(type_bounds)s::int[])[i + 1]]
            AS types
    ) q
    JOIN {tag} t ON t.tag = q.tags[1] AND t.main_id > %(after)s
    JOIN {main} c ON c.id = t.main_id
    WHERE c.tags @> q.tags AND (cardinality(q.types) = 0 OR c.type = ANY(q.types))
"""

_READ_TAGGED = (
    "SELECT m.id, m.type, m.data, m.tags FROM {main} m WHERE m.id IN ("
    + _TAGGED_CANDIDATES
    + ") ORDER BY m.id LIMIT %(limit)s"
)

# Items without tags (each with types): one set of types.
_READ_TYPED = (
    "SELECT m.id, m.type, m.data, m.tags FROM {main} m "
    "WHERE m.id > %(after)s AND m.type = ANY(%(loose_types)s::text[]) "
    "ORDER BY m.id LIMIT %(limit)s"
)

_READ_MIXED = (
    "SELECT m.id, m.type, m.data, m.tags FROM {main} m WHERE m.id IN ("
    + _TAGGED_CANDIDATES
    + " UNION SELECT o.id FROM {main} o "
    "WHERE o.id > %(after)s AND o.type = ANY(%(loose_types)s::text[])"
    ") ORDER BY m.id LIMIT %(limit)s"
)

_WITH_HEAD = (
    "SELECT e.id, e.type, e.data, e.tags, h.head "
    "FROM (SELECT max(x.id) AS head FROM {main} x) h "
    "LEFT JOIN LATERAL ({selected}) e ON true ORDER BY e.id"
)
