"""The image built and the compose file run for real, on a machine whose Docker daemon answers.

Marked ``docker`` and deselected by default (pyproject's ``addopts``), so that ``make test``
neither runs it nor counts it as a skip: run it with ``make test-docker`` (``pytest -m
docker tests/deploy``). Asked for, it fails, never skips, when no daemon answers.
``tests/deploy/test_deploy.py`` runs the same services as local processes everywhere.

The secrets come from deploy/README.md's own command, run as written.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from eventsourcing.cipher import AESCipher
from eventsourcing.utils import Environment

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
WAIT = 120.0


def readme_env_command() -> str:
    """deploy/README.md's command that writes the secrets to ``.env``."""
    (command,) = re.findall(r"^(python3 -c .*> \.env)$", (DEPLOY / "README.md").read_text(), re.M)
    return str(command)


def test_the_readme_command_writes_secrets_that_compose_and_the_cipher_take(
    tmp_path: Path,
) -> None:
    """Runs everywhere: the first step of the Compose walkthrough, without Docker."""
    subprocess.run(readme_env_command(), shell=True, cwd=tmp_path, check=True)
    lines = (tmp_path / ".env").read_text().splitlines()
    secrets = dict(line.split("=", 1) for line in lines)
    example = (DEPLOY / ".env.example").read_text().splitlines()
    assert set(secrets) == {line.split("=")[0] for line in example if line[:1].isalpha()}
    assert re.fullmatch(r"[0-9a-f]{32}", secrets["POSTGRES_PASSWORD"])
    cipher = AESCipher(Environment(env={"CIPHER_KEY": secrets["CIPHER_KEY"]}))
    assert cipher.decrypt(cipher.encrypt(b"colour=red")) == b"colour=red"


@pytest.mark.docker
def test_the_image_builds_and_the_compose_cluster_serves_puts_and_gets(tmp_path: Path) -> None:
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    assert info.returncode == 0, f"pytest -m docker needs a Docker daemon: {info.stderr}"
    subprocess.run(readme_env_command(), shell=True, cwd=tmp_path, check=True)
    compose = ["docker", "compose", "--project-name", f"es-test-{os.getpid()}", "--file",
               str(DEPLOY / "compose.yaml"), "--env-file", str(tmp_path / ".env")]  # fmt: skip

    def run(*args: str, timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*compose, *args], capture_output=True, text=True, timeout=timeout)

    try:
        up = run("up", "--detach", "--build", "--wait", timeout=1800)  # --wait: until healthy
        assert up.returncode == 0, up.stderr
        put = run("run", "--rm", "client", "put", "colour", "red")
        assert (put.returncode, put.stdout.strip()) == (0, "colour=red"), put.stderr
        for replica in ("Replica0", "Replica1", "Replica2"):
            deadline = time.monotonic() + WAIT
            while (got := run("run", "--rm", "client", "get", "colour", "--replica", replica)
                   ).stdout.strip() != "red":  # fmt: skip
                assert time.monotonic() < deadline, got.stderr
                time.sleep(1)
        # A replica stopped leaves a majority: puts still succeed.
        assert run("stop", "replica1").returncode == 0
        put = run("run", "--rm", "client", "put", "colour", "blue")
        assert (put.returncode, put.stdout.strip()) == (0, "colour=blue"), put.stderr
    finally:
        run("down", "--volumes", "--remove-orphans", timeout=300)
