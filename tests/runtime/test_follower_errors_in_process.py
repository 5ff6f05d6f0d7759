"""Error policies on the in-process runners (opt-in there) and on MultiProcessRunner, and
the Python API of :mod:`runners.control` over a running system."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ledger_model import SYSTEM, Ledger, PoisonError, Shop

from eventsourcing.deadletters import PARKED, RESOLVED, SKIPPED
from eventsourcing.system import (
    EventProcessingError,
    MultiThreadedRunner,
    NewMultiThreadedRunner,
    NewSingleThreadedRunner,
    Runner,
    SingleThreadedRunner,
)
from runners.control import FollowerControl
from runners.errors import RefusedError
from runners.multiprocess import MultiProcessRunner

IN_PROCESS = [SingleThreadedRunner, NewSingleThreadedRunner, MultiThreadedRunner,
              NewMultiThreadedRunner]  # fmt: skip
HERE = Path(__file__).resolve().parent


@pytest.fixture
def poison(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "poison.txt"
    monkeypatch.setenv("POISON_FILE", str(path))
    return path


def wait_for(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture(params=IN_PROCESS, ids=lambda cls: cls.__name__)
def runner(request: pytest.FixtureRequest, poison: Path) -> Iterator[Runner[Any]]:
    env = {"FOLLOWER_ERRORS": "park", "FOLLOWER_RETRIES": "1", "FOLLOWER_RETRY_DELAY": "0"}
    made: Runner[Any] = request.param(SYSTEM, env=env)
    made.start()
    try:
        yield made
    finally:
        made.stop()


def test_park_on_an_in_process_runner_then_retry_through_the_python_api(
    runner: Runner[Any], poison: Path
) -> None:
    shop, ledger = runner.get(Shop), runner.get(Ledger)
    accounts = shop.open_accounts(5)
    wait_for(lambda: ledger.recorder.max_tracking_id("Shop") == 5)
    poison.write_text(str(accounts[2]))
    shop.deposit_round(accounts)  # no error reaches the caller: it is parked
    shop.deposit_round(accounts)
    wait_for(lambda: ledger.recorder.max_tracking_id("Shop") == 15)
    with FollowerControl(SYSTEM, "Ledger", app=ledger) as control:
        letters = control.dead_letters()
        assert [(d.notification_id, d.status) for d in letters] == [(8, PARKED), (13, PARKED)]
        assert letters[0].error_type == f"{PoisonError.__module__}.PoisonError"
        assert letters[1].reason == "parked behind notification 8 of the same originator"
        assert ledger.lines(accounts[2]) == [3]
        assert ledger.lines(accounts[1]) == [2, 7, 12]
        poison.write_text("")
        assert control.retry(everything=True) == 2
        assert control.process_retries() == 2
        assert control.dead_letters() == []
        assert [d.status for d in control.dead_letters(statuses=[RESOLVED])] == [RESOLVED] * 2
    assert ledger.lines(accounts[2]) == [3, 8, 13]
    shop.deposit_round(accounts)  # the account is no longer parked
    wait_for(lambda: ledger.recorder.max_tracking_id("Shop") == 20)
    assert ledger.lines(accounts[2]) == [3, 8, 13, 18]


def test_stop_stays_the_default_of_the_in_process_runners(poison: Path) -> None:
    runner = SingleThreadedRunner(SYSTEM)
    runner.start()
    try:
        shop = runner.get(Shop)
        accounts = shop.open_accounts(2)
        poison.write_text(str(accounts[0]))
        with pytest.raises(PoisonError):
            shop.deposit_round(accounts)
    finally:
        runner.stop()


def test_skip_on_a_threaded_runner(poison: Path) -> None:
    runner = MultiThreadedRunner(SYSTEM, env={"FOLLOWER_ERRORS": "skip"})
    runner.start()
    try:
        shop, ledger = runner.get(Shop), runner.get(Ledger)
        accounts = shop.open_accounts(3)
        wait_for(lambda: ledger.recorder.max_tracking_id("Shop") == 3)
        poison.write_text(str(accounts[1]))
        shop.deposit_round(accounts)
        wait_for(lambda: ledger.recorder.max_tracking_id("Shop") == 6)
        poison.write_text("")
        shop.deposit_round(accounts)
        wait_for(lambda: ledger.recorder.max_tracking_id("Shop") == 9)
        assert ledger.lines(accounts[1]) == [2, 8]
        with FollowerControl(SYSTEM, "Ledger", app=ledger) as control:
            assert control.dead_letters() == []  # skipped is not open
            skipped = control.dead_letters(statuses=[SKIPPED])
            assert [d.notification_id for d in skipped] == [5]
        assert not runner.has_errored.is_set()
    finally:
        runner.stop()


def test_an_invalid_setting_names_the_accepted_values() -> None:
    with pytest.raises(ValueError, match=r"FOLLOWER_ERRORS value 'parc'.*park"):
        SingleThreadedRunner(SYSTEM, env={"FOLLOWER_ERRORS": "parc"})
    with pytest.raises(ValueError, match="FOLLOWER_RETRIES value 'x'"):
        SingleThreadedRunner(SYSTEM, env={"FOLLOWER_RETRIES": "x"})


def _sqlite_env(tmp_path: Path) -> dict[str, str]:
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite"}
    for name in ("Shop", "Ledger", "Audit"):
        env[f"{name.upper()}_SQLITE_DBNAME"] = str(tmp_path / f"{name}.sqlite3")
    return env


def test_multiprocess_runner_stops_by_default_and_parks_when_asked(
    tmp_path: Path, poison: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    env = _sqlite_env(tmp_path)
    shop = Shop(env=env)
    accounts = shop.open_accounts(3)
    poison.write_text(str(accounts[0]))
    shop.deposit_round(accounts)
    try:
        with MultiProcessRunner(SYSTEM, env={**env, "FOLLOWER_ERRORS": "park",
                                             "FOLLOWER_RETRIES": "0"}) as runner:  # fmt: skip
            ledger = Ledger(env=env)
            try:
                wait_for(lambda: ledger.recorder.max_tracking_id("Shop") == 6, timeout=60)
                assert not runner.has_errored.is_set()
                with FollowerControl(SYSTEM, "Ledger", env) as control:
                    assert [d.notification_id for d in control.dead_letters()] == [1, 4]
                    # A reset while a worker holds the lease is refused, changing nothing.
                    with pytest.raises(RefusedError, match="pause"):
                        control.reset("Shop", "start")
                    assert ledger.recorder.max_tracking_id("Shop") == 6
            finally:
                ledger.close()
        runner = MultiProcessRunner(SYSTEM, env=env)
        runner.start()
        try:
            shop.deposit_round(accounts[:1])  # parked behind: no error
            shop.open_accounts(1)
            wait_for(lambda: runner.has_errored.is_set() or _tracked(env) == 8, timeout=60)
            assert not runner.has_errored.is_set()
            poison.write_text(str(accounts[1]))
            shop.deposit_round(accounts[1:2])
            assert runner.has_errored.wait(60)
        finally:
            with pytest.raises(EventProcessingError, match="poisoned"):
                runner.stop()
    finally:
        shop.close()


def _tracked(env: dict[str, str]) -> int:
    ledger = Ledger(env=env)
    try:
        return ledger.recorder.max_tracking_id("Shop") or 0
    finally:
        ledger.close()
