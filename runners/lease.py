"""One active worker per application: a lease that a standby waits for.

Which lease, from the follower's store (``WORKER_LEASE``, application-prefixed, overrides):

==========================  =================================================================
store / ``WORKER_LEASE``     lease
==========================  =================================================================
PostgreSQL (``auto``)       session advisory lock on the follower's database: the server
                            releases it the moment the holder's connection dies (SIGKILL too)
SQLite file (``auto``)      ``flock`` on ``<database file>.lease``: the kernel releases it
                            when the holder's process ends
``redis://...``             ``SET NX PX`` with a random token, renewed every second; a dead
                            holder's lease expires after ``REDIS_LEASE_TTL`` (5 s)
==========================  =================================================================

A lease keeps a second worker idle; it does not make processing exactly-once. The tracking
record does that (a batch is refused unless the stored position is the one it was read
from), so a lease lost during a long pause costs a refused batch, never a duplicate.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from eventsourcing.persistence import PersistenceError
from eventsourcing.utils import Environment
from runners.errors import ConfigurationError, NotShareableError, TransportConnectionError

__all__ = ["FileLease", "Lease", "PostgresLease", "RedisLease", "lease_for"]

WORKER_LEASE = "WORKER_LEASE"
CHECK_INTERVAL = 1.0  # seconds between checks (and renewals) of a held lease
# What a lost connection to the lease's database or Redis raises: the lease is not held.
CONNECTION_ERRORS = (OSError, PersistenceError, TransportConnectionError)


class Lease(ABC):
    """The right of one worker to process the application ``name``."""

    def __init__(self, name: str) -> None:
        """A lease on the application ``name``, not yet held."""
        self.name = name
        self.held = False
        self._checked_at = 0.0
        #: The last connection failure of :meth:`try_acquire` or :meth:`check` (None: fine).
        self.error: str | None = None

    @abstractmethod
    def describe(self) -> str:
        """Say what the lease is, for log lines."""

    @abstractmethod
    def _try_acquire(self) -> bool: ...

    @abstractmethod
    def _still_held(self) -> bool: ...

    @abstractmethod
    def _release(self) -> None: ...

    def try_acquire(self) -> bool:
        """Take the lease if it is free; never blocks. Connection failures count as no."""
        if not self.held:
            self._ask(self._try_acquire)
        return self.held

    def check(self) -> bool:
        """Whether the lease is still held, checking (and renewing) at most once a second."""
        if self.held and time.monotonic() - self._checked_at >= CHECK_INTERVAL:
            self._ask(self._still_held)
        return self.held

    def _ask(self, question: Callable[[], bool]) -> None:
        """Set ``held`` to the answer to ``question``; a connection failure means no."""
        try:
            self.held, self.error = question(), None
        except CONNECTION_ERRORS as e:
            self.held, self.error = False, str(e)
        self._checked_at = time.monotonic()

    def release(self) -> None:
        """Give the lease up (if held) and close its connection."""
        # A lease whose connection died is released already.
        with suppress(*CONNECTION_ERRORS):
            self._release()
        self.held = False


def _key(name: str) -> int:
    """A signed 64-bit advisory-lock key for the application ``name``."""
    digest = hashlib.blake2b(f"eventsourcing-runner:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PostgresLease(Lease):
    """A session-level advisory lock held on a connection of its own."""

    def __init__(self, name: str, datastore: Any) -> None:
        """Lock on the database of ``datastore`` (a PostgresDatastore)."""
        super().__init__(name)
        self.datastore = datastore
        self.key = _key(f"{datastore.schema}.{name}")
        self._conn: Any = None

    def describe(self) -> str:
        """Name the lock and the database."""
        return f"advisory lock {self.key} on {self.datastore.describe()}"

    def _try_acquire(self) -> bool:
        import psycopg

        try:
            if self._conn is None or self._conn.closed:
                self._conn = self.datastore.connect()
            query = "SELECT pg_try_advisory_lock(%s) AS ok"
            row = self._conn.execute(query, (self.key,)).fetchone()
        except psycopg.Error as e:
            self._close()
            raise OSError(str(e)) from e
        return bool(row and row["ok"])

    def _still_held(self) -> bool:
        import psycopg

        try:
            self._conn.execute("SELECT 1")
        except psycopg.Error:
            self._close()
            return False
        return True

    def _release(self) -> None:
        self._close()  # closing the session releases the lock

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class FileLease(Lease):
    """An exclusive ``flock`` on a file beside the SQLite database."""

    def __init__(self, name: str, path: str) -> None:
        """Lock the file ``path`` (created if missing)."""
        super().__init__(name)
        self.path = path
        self._fd: int | None = None

    def describe(self) -> str:
        """Name the lock file."""
        return f"file lock {self.path}"

    def _try_acquire(self) -> bool:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _still_held(self) -> bool:
        return True  # released only when this process closes the file or ends

    def _release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing releases the lock


class RedisLease(Lease):
    """A Redis key holding a random token, with an expiry renewed while held."""

    #: Lua scripts: renew (or delete) the key only while it holds this worker's token.
    RENEW = (
        "if redis.call('get', KEYS[1]) == ARGV[1] then "
        "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
    )
    RELEASE = (
        "if redis.call('get', KEYS[1]) == ARGV[1] then "
        "return redis.call('del', KEYS[1]) else return 0 end"
    )

    def __init__(self, name: str, url: str, ttl: float = 5.0) -> None:
        """Hold ``eventsourcing:lease:<name>`` on the Redis at ``url`` for ``ttl`` s at a time."""
        from runners.transports.redis import redis_client

        super().__init__(name)
        self.url = url
        self.ttl_ms = int(ttl * 1000)
        self.key = f"eventsourcing:lease:{name}"
        self.token = uuid.uuid4().hex
        self._client = redis_client(url)

    def describe(self) -> str:
        """Name the key and the server."""
        return f"Redis lease {self.key} (expires {self.ttl_ms} ms after its holder stops)"

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import redis

        try:
            return fn(*args, **kwargs)
        except redis.RedisError as e:
            raise TransportConnectionError(str(e)) from e

    def _try_acquire(self) -> bool:
        ok = self._call(self._client.set, self.key, self.token, nx=True, px=self.ttl_ms)
        return bool(ok)

    def _still_held(self) -> bool:
        renewed = self._call(self._client.eval, self.RENEW, 1, self.key, self.token, self.ttl_ms)
        return bool(renewed)

    def _release(self) -> None:
        try:
            self._call(self._client.eval, self.RELEASE, 1, self.key, self.token)
        finally:
            self._client.close()


def lease_for(name: str, recorder: Any, env: Environment) -> Lease:
    """Return the lease for the application ``name`` stored by ``recorder``."""
    setting = env.get(WORKER_LEASE, "auto").strip()
    if setting.startswith(("redis://", "rediss://")):
        ttl = float(env.get("REDIS_LEASE_TTL", "5"))
        return RedisLease(name, setting, ttl)
    if setting != "auto":
        msg = (
            f"Invalid {WORKER_LEASE} value {setting!r} for {name!r}: set 'auto' (an advisory "
            "lock on PostgreSQL, a file lock for SQLite files) or a redis:// URL"
        )
        raise ConfigurationError(msg)
    datastore = getattr(recorder, "datastore", None)
    if hasattr(datastore, "describe") and hasattr(datastore, "schema"):
        return PostgresLease(name, datastore)
    pool = getattr(datastore, "pool", None)
    db_name = getattr(pool, "db_name", None)
    if isinstance(db_name, str) and not getattr(datastore, "is_memory", True):
        path = db_name.removeprefix("file:").partition("?")[0]
        return FileLease(name, path + ".lease")
    msg = (
        f"{name!r} is stored with {type(recorder).__name__}, which other processes can't "
        "reach: in-memory stores cannot be shared between processes. Use eventsourcing.sqlite "
        "with a database file or eventsourcing.postgres (PERSISTENCE_MODULE)"
    )
    raise NotShareableError(msg)
