"""A follower in production: a poison event parked with its aggregate's later events and
retried exactly once, transient failures retried, skip, reset, rebuild, pause and resume.

Real worker processes (the CLI), killed with SIGKILL while they park and while they retry,
two workers on one follower, on SQLite files and on PostgreSQL. What the follower derived
is counted with SQL, without the library: one row in its events table per event processed.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from ledger_model import APPS, SYSTEM_TOPIC, Audit, Ledger, Shop
from runner_helpers import ROOT, TESTS, WorkerProcess

from eventsourcing.deadletters import PARKED, RESOLVED, SKIPPED

STORES = ["sqlite_file", "postgres"]
WAIT = 120.0
HERE = Path(__file__).resolve().parent


@pytest.fixture
def ledger(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LedgerSystem]:
    kind = request.param
    system = LedgerSystem(kind, tmp_path, request)
    try:
        yield system
    finally:
        system.close()


class LedgerSystem:
    """The ledger system's stores, its workers (processes) and its CLI."""

    def __init__(self, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.poison = tmp_path / "poison.txt"
        self.flaky = tmp_path / "flaky.txt"
        env = {
            "FOLLOWER_RETRIES": "1",
            "FOLLOWER_RETRY_DELAY": "0.05",
            "POISON_FILE": str(self.poison),
            "FLAKY_FILE": str(self.flaky),
        }
        if kind == "postgres":
            database = request.getfixturevalue("postgres_database")
            env.update({"PERSISTENCE_MODULE": "eventsourcing.postgres", **database.env})
        else:
            env["PERSISTENCE_MODULE"] = "eventsourcing.sqlite"
            for name in APPS:
                env[f"{name.upper()}_SQLITE_DBNAME"] = str(tmp_path / f"{name}.sqlite3")
        self.env = env
        self.workers: list[WorkerProcess] = []
        self.shop = Shop(env=env)

    def close(self) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                worker.kill()
        self.shop.close()

    # -- processes ------------------------------------------------------------------

    def _process_env(self, **extra: str) -> dict[str, str]:
        path = os.pathsep.join([str(HERE), str(TESTS), str(ROOT)])
        return {**os.environ, **self.env, **extra, "PYTHONPATH": path}

    def worker(self, *apps: str, options: tuple[str, ...] = (), **extra: str) -> WorkerProcess:
        """Start a worker of ``apps`` (default Ledger) with CLI ``options``, and ``extra``
        settings."""
        args = ["run", SYSTEM_TOPIC, "--poll-interval", "0.3", *options]
        for app in apps or ("Ledger",):
            args += ["--app", app]
        log = self.tmp_path / f"worker-{len(self.workers)}.log"
        worker = WorkerProcess(args, self._process_env(**extra), log).start()
        self.workers.append(worker)
        return worker

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        command, rest = args[0], args[1:]
        return subprocess.run(
            [sys.executable, "-m", "runners", command, SYSTEM_TOPIC, *rest],
            env=self._process_env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=WAIT,
        )

    def letters(self, *args: str) -> list[dict[str, Any]]:
        result = self.cli("dead-letters", "--app", "Ledger", "--json", *args)
        assert result.returncode == 0, result.stderr
        letters: list[dict[str, Any]] = json.loads(result.stdout)
        return letters

    # -- counting, with SQL ---------------------------------------------------------

    def rows(self, app: str) -> Counter[str]:
        """The events ``app`` recorded, by originator id (SQL, not the library)."""
        if self.kind == "postgres":
            params = {k.removeprefix("POSTGRES_").lower(): v for k, v in self.env.items()
                      if k in ("POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_USER",
                               "POSTGRES_PASSWORD")}  # fmt: skip
            with psycopg.connect(dbname=self.env["POSTGRES_DBNAME"], **params) as conn:
                found = conn.execute(
                    f"SELECT originator_id::text, COUNT(*) FROM {app.lower()}_events GROUP BY 1"
                ).fetchall()
        else:
            with sqlite3.connect(self.tmp_path / f"{app}.sqlite3") as conn:
                found = conn.execute(
                    "SELECT originator_id, COUNT(*) FROM stored_events GROUP BY 1"
                ).fetchall()
        return Counter({str(UUID(str(k))): int(n) for k, n in found})

    def derived(self) -> Counter[str]:
        """Lines of the ledger by account (a book's Started event is no line)."""
        return Counter({k: n - 1 for k, n in self.rows("Ledger").items()})

    def position(self) -> int:
        ledger = Ledger(env=self.env)
        try:
            return ledger.recorder.max_tracking_id("Shop") or 0
        finally:
            ledger.close()

    def wait_until(self, what: str, check: Callable[[], bool], timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            gone = all(w.process is not None and w.process.poll() is not None
                       for w in self.workers)  # fmt: skip
            if time.monotonic() > deadline or (self.workers and gone):
                logs = "\n".join(w.text()[-3000:] for w in self.workers)
                raise AssertionError(f"timed out waiting for {what}\n{logs}")
            time.sleep(0.1)

    def wait_processed(self) -> None:
        last = self.shop.recorder.max_notification_id() or 0
        self.wait_until(f"Ledger at {last}", lambda: self.position() >= last)

    def lines(self, account_id: UUID) -> list[int]:
        ledger = Ledger(env=self.env)
        try:
            return ledger.lines(account_id)
        finally:
            ledger.close()


def write_events(shop: Shop, accounts: list[UUID], rounds: int) -> None:
    for _ in range(rounds):
        shop.deposit_round(accounts)


def active(workers: list[WorkerProcess]) -> WorkerProcess:
    """The worker (of these, alive) that holds the lease."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        for worker in workers:
            alive = worker.process is not None and worker.process.poll() is None
            if alive and "holding the lease" in worker.text():
                return worker
        time.sleep(0.05)
    raise AssertionError("no worker took the lease")


# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ledger", STORES, indirect=True)
def test_a_poison_event_is_parked_with_its_aggregate_and_retried_exactly_once(
    ledger: LedgerSystem,
) -> None:
    rng = random.Random(17)
    shop = ledger.shop
    accounts = shop.open_accounts(100)
    poisoned = accounts[37]
    ledger.poison.write_text(str(poisoned))
    write_events(shop, accounts, 24)  # 2,500 events: a backlog
    # Two workers on the follower: one processes, one stands by.
    workers = [ledger.worker(), ledger.worker()]
    first = active(workers)
    # SIGKILL the active worker while it parks (its first letter is on the way).
    first.wait_for("parked")
    time.sleep(rng.uniform(0, 0.2))
    first.kill()
    next(w for w in workers if w is not first).wait_for("holding the lease")
    write_events(shop, accounts, 25)  # 2,500 more, live: 5,000 in all
    ledger.wait_processed()

    events = ledger.rows("Shop")
    assert sum(events.values()) == 5000
    derived = ledger.derived()
    # Every other account's events were processed exactly once; none of the poisoned one's.
    assert {k: v for k, v in derived.items()} == {
        str(a): events[str(a)] for a in accounts if a != poisoned
    }
    letters = ledger.letters()
    assert [d["originator_id"] for d in letters] == [str(poisoned)] * events[str(poisoned)]
    ids = [d["notification_id"] for d in letters]
    assert ids == sorted(ids)
    assert letters[0]["error_type"] == "ledger_model.PoisonError"
    assert "is poisoned" in letters[0]["error_message"]
    assert "PoisonError" in letters[0]["traceback"]
    assert all(d["status"] == PARKED for d in letters)
    assert all(not d["error_type"] and "parked behind" in d["reason"] for d in letters[1:])
    table = ledger.cli("dead-letters", "--app", "Ledger")
    assert table.returncode == 0 and "PoisonError" in table.stdout
    status = ledger.cli("status", "--json")
    row = next(r for r in json.loads(status.stdout) if r["follower"] == "Ledger")
    assert row["parked"] == len(letters) and row["paused"] is False

    # A fixed policy is deployed (the workers restart), then the letters are retried,
    # with the active worker killed while it retries.
    ledger.poison.write_text("")
    for worker in workers:
        if worker.process is not None and worker.process.poll() is None:
            worker.kill()
    workers = [ledger.worker(), ledger.worker()]
    retrying = active(workers)
    result = ledger.cli("retry", "--app", "Ledger", "--originator", str(poisoned))
    assert result.returncode == 0, result.stderr
    assert f"{len(letters)} dead letter(s)" in result.stdout
    retrying.wait_for("processed the retry", count=3)
    retrying.kill()
    ledger.wait_until("the retries", lambda: not ledger.letters())
    assert ledger.derived() == {str(a): events[str(a)] for a in accounts}
    # In order: the book's lines are the account's notifications, in the log's order.
    assert ledger.lines(poisoned) == ids
    resolved = ledger.letters("--status", RESOLVED)
    assert [d["notification_id"] for d in resolved] == ids


@pytest.mark.parametrize("ledger", STORES, indirect=True)
def test_a_transient_failure_is_retried_and_skip_passes_over(ledger: LedgerSystem) -> None:
    shop = ledger.shop
    accounts = shop.open_accounts(10)
    ledger.flaky.write_text(str(accounts[3]))
    write_events(shop, accounts, 2)
    worker = ledger.worker(FOLLOWER_RETRIES="3")
    ledger.wait_processed()
    assert worker.text().count("retrying in") >= 3
    assert ledger.letters() == []
    assert ledger.derived() == {str(a): 3 for a in accounts}
    worker.kill()

    # skip: the failure is recorded, the account's later events are processed.
    ledger.poison.write_text(str(accounts[5]))
    write_events(shop, accounts, 1)
    ledger.worker(FOLLOWER_ERRORS="skip", FOLLOWER_RETRIES="0")
    ledger.wait_processed()
    skipped = ledger.letters("--status", SKIPPED)
    assert [d["originator_id"] for d in skipped] == [str(accounts[5])]
    ledger.poison.write_text("")
    write_events(shop, accounts, 1)
    ledger.wait_processed()
    derived = ledger.derived()
    assert derived[str(accounts[5])] == 4 and derived[str(accounts[4])] == 5


@pytest.mark.parametrize("ledger", STORES, indirect=True)
def test_reset_and_rebuild_on_a_running_system(ledger: LedgerSystem) -> None:
    shop = ledger.shop
    accounts = shop.open_accounts(20)
    write_events(shop, accounts, 9)  # 200 events
    ledger.worker("Ledger", "Audit")
    ledger.wait_processed()
    assert sum(ledger.derived().values()) == 200

    # Refused while a worker holds the lease; nothing changed.
    refused = ledger.cli("reset", "--app", "Ledger", "--to", "150")
    assert refused.returncode == 6, refused.stderr
    assert "--pause" in refused.stderr and "nothing was changed" in refused.stderr
    bad = ledger.cli("reset", "--app", "Ledger", "--to", "999")
    assert bad.returncode == 2 and "ends at notification 200" in bad.stderr
    assert ledger.position() == 200

    # With --pause: processed again from 151, once.
    done = ledger.cli("reset", "--app", "Ledger", "--to", "150", "--pause")
    assert done.returncode == 0, done.stderr
    ledger.wait_processed()
    time.sleep(1)  # a few poll intervals: anything processed twice would show
    assert sum(ledger.derived().values()) == 250

    # Rebuild: refused for a follower that Audit follows, unless with its followers.
    refused = ledger.cli("rebuild", "--app", "Ledger", "--pause")
    assert refused.returncode == 6 and "['Audit']" in refused.stderr
    assert sum(ledger.derived().values()) == 250
    rebuilt = ledger.cli("rebuild", "--app", "Ledger", "--with-followers", "--pause")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "Ledger: erased" in rebuilt.stdout and "Audit: erased" in rebuilt.stdout
    assert ledger.derived() == {str(a): 10 for a in accounts}
    audit = Audit(env=ledger.env)
    ledger_app = Ledger(env=ledger.env)
    try:
        ledger_last = ledger_app.recorder.max_notification_id()
        assert audit.recorder.max_tracking_id("Ledger") == ledger_last
    finally:
        audit.close()
        ledger_app.close()


@pytest.mark.parametrize("ledger", STORES, indirect=True)
def test_pause_survives_a_sigkill_and_a_failover(ledger: LedgerSystem) -> None:
    shop = ledger.shop
    accounts = shop.open_accounts(10)
    workers = [ledger.worker(), ledger.worker()]
    first = active(workers)
    ledger.wait_processed()
    paused = ledger.cli("pause", "--app", "Ledger")
    assert paused.returncode == 0, paused.stderr
    assert f":{first.process.pid}" in paused.stdout  # type: ignore[union-attr]
    write_events(shop, accounts, 3)
    time.sleep(1.5)  # five poll intervals
    assert ledger.position() == 10
    first.kill()  # the standby takes over, and stays paused
    standby = next(w for w in workers if w is not first)
    standby.wait_for("holding the lease")
    standby.wait_for("paused")
    status = ledger.cli("status", "--json")
    row = next(r for r in json.loads(status.stdout) if r["follower"] == "Ledger")
    assert row["paused"] is True and row["lag"] == 30
    assert ledger.position() == 10
    resumed = ledger.cli("resume", "--app", "Ledger")
    assert resumed.returncode == 0, resumed.stderr
    ledger.wait_processed()
    assert ledger.derived() == {str(a): 4 for a in accounts}  # opened, then 3 deposits


@pytest.mark.parametrize("ledger", ["sqlite_file"], indirect=True)
def test_metrics_count_failures_and_a_paused_worker_is_live_but_not_ready(
    ledger: LedgerSystem,
) -> None:
    from test_worker_metrics import value, wait_status

    from runners.testing.servers import free_port

    shop = ledger.shop
    accounts = shop.open_accounts(4)
    ledger.poison.write_text(str(accounts[1]))
    write_events(shop, accounts, 2)
    port = free_port()
    ledger.worker(options=("--metrics-port", str(port)))
    ledger.wait_processed()
    labels = {"follower": "Ledger", "leader": "Shop"}
    wait_status(port, "/readyz", 200)
    assert value(port, "eventsourcing_policy_retries_total", **labels) == 1
    assert value(port, "eventsourcing_notifications_parked_total", **labels) == 3
    assert ledger.cli("pause", "--app", "Ledger").returncode == 0
    wait_status(port, "/readyz", 503)
    wait_status(port, "/healthz", 200)
    assert value(port, "eventsourcing_paused", follower="Ledger") == 1
    assert ledger.cli("resume", "--app", "Ledger").returncode == 0
    wait_status(port, "/readyz", 200)
    ledger.poison.write_text("")
    assert ledger.cli("retry", "--app", "Ledger", "--all").returncode == 0
    ledger.wait_until("the retries", lambda: not ledger.letters())
    assert value(port, "eventsourcing_dead_letters_resolved_total", **labels) == 3
