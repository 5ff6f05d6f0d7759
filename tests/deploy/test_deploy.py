"""The deploy files, tested without Docker.

The compose file's services run as local processes with the environment compose would give
them (``env_file``, ``environment`` with the secrets substituted), the servers' host names
pointed at the test's PostgreSQL and Redis. The Kubernetes manifests are checked against the
system, their ConfigMap and Secret, and what a worker serves.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from examples.paxos.system import system
from runners.metrics import MetricsServer, WorkerMetrics
from runners.testing.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SECRETS = {"POSTGRES_PASSWORD", "CIPHER_KEY"}
WAIT = 60.0


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return document


def runner_services() -> dict[str, str]:
    """``{service: application}`` for the services that run ``eventsourcing-runner run``."""
    found = {}
    for name, service in compose()["services"].items():
        command = service.get("command") or []
        if "entrypoint" not in service and command[:1] == ["run"]:
            assert command[1] == "examples.paxos.system:system", command
            found[name] = command[command.index("--app") + 1]
    return found


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if line.strip() and not line.startswith("#"))  # fmt: skip
    return {key.strip(): value.strip() for key, value in pairs}


def substitute(value: str, variables: dict[str, str]) -> str:
    """Compose's ``${VAR}`` and ``${VAR:?message}``: a missing variable is an error."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in variables, f"compose needs {name}: {match.group(0)}"
        return variables[name]

    return re.sub(r"\$\{(\w+)(?::\?[^}]*)?\}", one, value)


def service_env(service: dict[str, Any], secrets: dict[str, str]) -> dict[str, str]:
    """The environment compose gives a service's container."""
    env: dict[str, str] = {}
    for name in service.get("env_file", []):
        env.update(read_env_file(DEPLOY / name))
    for key, value in (service.get("environment") or {}).items():
        env[key] = substitute(str(value), secrets)
    return env


def test_compose_names_every_application_once_and_keeps_secrets_out() -> None:
    services = runner_services()
    assert sorted(services.values()) == sorted(system.followers) == sorted(system.nodes)
    text = (DEPLOY / "compose.yaml").read_text() + (DEPLOY / "worker.env").read_text()
    for secret in SECRETS:
        assert re.search(rf"{secret}: \$\{{{secret}:\?", text), secret  # only substituted
    document = compose()
    for name in services:
        depends = document["services"][name]["depends_on"]
        assert {k: v["condition"] for k, v in depends.items()} == {
            "postgres": "service_healthy", "redis": "service_healthy"}  # fmt: skip
    for server in ("postgres", "redis"):
        assert document["services"][server]["healthcheck"]["test"]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["eventsourcing-runner"]' in dockerfile
    assert dockerfile.count("FROM ") == 2 and "USER worker" in dockerfile


def local(env: dict[str, str], postgres: dict[str, str], redis_url: str) -> dict[str, str]:
    """``env`` with the compose host names mapped to the local test servers."""
    assert env["POSTGRES_HOST"] == "postgres"
    assert env["PROMPT_TRANSPORT"].startswith("redis://redis:")
    overrides = {**postgres, "PROMPT_TRANSPORT": redis_url,
                 "EVENTSOURCING_RUNNER_METRICS_HOST": "127.0.0.1"}  # fmt: skip
    return {**os.environ, **env, **overrides, "PYTHONPATH": str(ROOT)}


def get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def test_compose_services_run_as_local_processes(
    tmp_path: Path, postgres_database: Any, redis_url: str
) -> None:
    document = compose()
    secrets = {"POSTGRES_PASSWORD": postgres_database.env["POSTGRES_PASSWORD"],
               "CIPHER_KEY": base64.b64encode(os.urandom(32)).decode()}  # fmt: skip
    processes: list[subprocess.Popen[bytes]] = []
    ports: dict[str, int] = {}
    try:
        for name in runner_services():
            service = document["services"][name]
            env = local(service_env(service, secrets), postgres_database.env, redis_url)
            ports[name] = free_port()
            env["EVENTSOURCING_RUNNER_METRICS_PORT"] = str(ports[name])
            log = (tmp_path / f"{name}.log").open("wb")
            command = [sys.executable, "-m", "runners", *service["command"]]
            processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=log, cwd=ROOT))
        deadline = time.monotonic() + WAIT
        for name, port in ports.items():  # the compose healthcheck's endpoint answers
            while get(port, "/healthz") != 200:
                assert time.monotonic() < deadline, (tmp_path / f"{name}.log").read_text()
                time.sleep(0.1)
        client = document["services"]["client"]
        env = local(service_env(client, secrets), postgres_database.env, redis_url)
        assert client["entrypoint"] == ["python", "-m", "examples.paxos"]

        def run_client(*args: str) -> subprocess.CompletedProcess[str]:
            command = [sys.executable, *client["entrypoint"][1:], *args]
            return subprocess.run(command, env=env, capture_output=True, text=True,
                                  timeout=WAIT, cwd=ROOT)  # fmt: skip

        put = run_client(*client["command"])
        assert put.returncode == 0, put.stderr
        key, value = client["command"][1:3]
        for replica in system.nodes:  # every replica's store has it
            deadline = time.monotonic() + WAIT
            while (got := run_client("get", key, "--replica", replica)).stdout.strip() != value:
                assert time.monotonic() < deadline, (got.stdout, got.stderr)
                time.sleep(0.2)
        # Stored encrypted: the value is nowhere in the clear in the database.
        with postgres_database.connect() as connection:
            rows = connection.execute("SELECT state FROM replica0_events").fetchall()
        assert rows and all(value.encode() not in bytes(row[0]) for row in rows)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            assert process.wait(30) == 0


# -- Kubernetes ------------------------------------------------------------------------------


def manifests() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    documents = []
    for resource in kustomization["resources"]:
        documents.extend(yaml.safe_load_all((DEPLOY / "k8s" / resource).read_text()))
    return documents


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in manifests() if d["kind"] == kind]


def test_kubernetes_has_a_deployment_per_application_with_defined_settings() -> None:
    (config,) = of_kind("ConfigMap")
    (secret,) = of_kind("Secret")
    assert set(secret["stringData"]) == SECRETS
    apps = []
    for deployment in of_kind("Deployment"):
        spec = deployment["spec"]
        assert spec["replicas"] == 2
        pod = spec["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] >= 30
        (container,) = pod["containers"]
        args = container["args"]
        assert args[:2] == ["run", "examples.paxos.system:system"]
        apps.append(args[args.index("--app") + 1])
        assert [s["configMapRef"]["name"] for s in container["envFrom"]] == [
            config["metadata"]["name"]]  # fmt: skip
        for variable in container["env"]:
            ref = variable["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"]
            assert ref["key"] in secret["stringData"]
        assert {v["name"] for v in container["env"]} == SECRETS
        assert set(container["resources"]["requests"]) == {"cpu", "memory"}
        (port,) = container["ports"]
        assert str(port["containerPort"]) == config["data"]["EVENTSOURCING_RUNNER_METRICS_PORT"]
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] == port["name"]
    assert sorted(apps) == sorted(system.followers)


def test_kubernetes_probes_ask_what_a_worker_serves() -> None:
    metrics = WorkerMetrics()
    server = MetricsServer(metrics, 0)
    try:
        for deployment in of_kind("Deployment"):
            (container,) = deployment["spec"]["template"]["spec"]["containers"]
            live = container["livenessProbe"]["httpGet"]["path"]
            ready = container["readinessProbe"]["httpGet"]["path"]
            assert get(server.port, live) == 200  # alive before it connects
            assert get(server.port, ready) == 503  # not ready yet
        metrics.connected()
        assert get(server.port, ready) == 200
        assert get(server.port, "/nonsense") == 404
    finally:
        server.close()
