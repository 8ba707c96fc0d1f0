"""Structural checks of the container and cluster files in docker/ (no Docker needed)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
STATEFUL = ("postgres", "mlflow", "ray-head", "ray-worker", "study")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _command(service: dict) -> str:
    cmd = service["command"]
    return cmd if isinstance(cmd, str) else " ".join(cmd)


def _depends(service: dict) -> dict[str, str]:
    return {name: (v or {}).get("condition", "service_started") for name, v in service["depends_on"].items()}


def test_no_version_key_and_only_portable_keys(compose):
    assert "version" not in compose
    for name, svc in compose["services"].items():
        assert "develop" not in svc, name
        assert isinstance(svc.get("depends_on", {}), dict), f"{name}: use the long form of depends_on"


def test_published_ports_bind_loopback_only(compose):
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name}: {port!r}"
    assert "ports" not in compose["services"]["postgres"]
    assert "ports" not in compose["services"]["ray-worker"]  # so that --scale works


def test_stateful_services_use_declared_named_volumes(compose):
    declared = set(compose["volumes"])
    assert {"pgdata", "mlartifacts", "studies"} <= declared
    for name in STATEFUL:
        sources = [v.split(":", 1)[0] for v in compose["services"][name].get("volumes", [])]
        named = [s for s in sources if not s.startswith((".", "/", "~"))]
        assert named, f"{name} mounts no named volume"
        assert set(named) <= declared, f"{name}: {named} not all declared at top level"
    for name in ("ray-head", "ray-worker", "study"):
        assert "studies:/home/snn/work/studies" in compose["services"][name]["volumes"], name


def test_healthchecks(compose):
    for name in ("postgres", "mlflow", "ray-head"):
        test = compose["services"][name]["healthcheck"]["test"]
        assert test and test[0] in ("CMD", "CMD-SHELL"), name
    assert "pg_isready" in compose["services"]["postgres"]["healthcheck"]["test"]
    assert "/health" in " ".join(compose["services"]["mlflow"]["healthcheck"]["test"])


def test_ray_and_mlflow_commands(compose):
    s = compose["services"]
    head, worker = _command(s["ray-head"]), _command(s["ray-worker"])
    assert head.startswith("ray start --head") and "--port=6379" in head and "--block" in head
    assert worker.startswith("ray start") and "--address=ray-head:6379" in worker and "--block" in worker
    mlflow = _command(s["mlflow"])
    assert mlflow.startswith("mlflow server") and "postgresql://" in mlflow and "@postgres:5432/mlflow" in mlflow
    assert "--host 0.0.0.0" in mlflow and "--port 5000" in mlflow
    study = _command(s["study"])
    assert "snn-study run" in study
    assert "--address=ray-head:6379" in study and "--tracking-uri=http://mlflow:5000" in study
    assert s["study"]["restart"] == "no"
    assert "container_name" not in s["ray-worker"]


def test_depends_on_conditions(compose):
    s = compose["services"]
    assert _depends(s["mlflow"])["postgres"] == "service_healthy"
    assert _depends(s["ray-worker"])["ray-head"] == "service_healthy"
    study = _depends(s["study"])
    assert study["mlflow"] == "service_healthy" and study["ray-head"] == "service_healthy"
    assert study["ray-worker"] == "service_started"
    allowed = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, svc in s.items():
        assert set(_depends(svc).values()) <= allowed if "depends_on" in svc else True, name


def test_no_secret_literals(compose):
    # Passwords come only from ${VAR:-default} substitutions, overridable from the environment/.env.
    for name, svc in compose["services"].items():
        env = svc.get("environment", {})
        if isinstance(env, list):
            env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
        for key, value in env.items():
            if re.search(r"PASSWORD|SECRET|TOKEN", key):
                assert value is None or re.fullmatch(r"\$\{\w+(:?-[^}]*)?\}", str(value)), f"{name}: {key}"
    text = (DOCKER / "compose.yaml").read_text()
    for m in re.finditer(r"\w*(PASSWORD|SECRET|TOKEN)\w*=(\S+)", text):
        assert m.group(2).startswith("${"), m.group(0)
    for m in re.finditer(r"://[^:/\s@]+:([^@\s]+)@", text):
        assert m.group(1).startswith("${"), m.group(0)
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert not re.search(r"(?im)^\s*(ENV|ARG)\s+\S*(PASSWORD|SECRET|TOKEN)", dockerfile)


def test_dockerfile():
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"(?m)^ARG BASE_IMAGE=", text)
    assert re.search(r"(?m)^ARG PIP_EXTRA_ARGS=", text)
    users = re.findall(r"(?m)^USER\s+(\S+)", text)
    assert users and users[-1] not in ("root", "0"), users
    assert (DOCKER / "wheels").is_dir()  # COPY docker/wheels/ needs it in the build context
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored and "docker" not in ignored


def test_cluster_configs():
    aws = yaml.safe_load((DOCKER / "cluster.yaml").read_text())
    local = yaml.safe_load((DOCKER / "cluster-local.yaml").read_text())
    assert aws["provider"]["type"] == "aws"
    assert local["provider"]["type"] == "local"
    gpu = [t for t in aws["available_node_types"].values() if t.get("resources", {}).get("GPU")]
    assert gpu and gpu[0]["max_workers"] >= 1
    for cfg in (aws, local):
        assert cfg["file_mounts"] == {"~/snn-study": "."}


def test_example_spec_is_valid():
    from study.spec import load_spec

    spec = load_spec(DOCKER / "specs" / "quickstart.yaml")
    assert spec.storage == "studies"


def _compose_cli() -> list[str] | None:
    if shutil.which("docker"):
        try:
            if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0:
                return ["docker", "compose"]
        except (OSError, subprocess.TimeoutExpired):
            pass
    return ["docker-compose"] if shutil.which("docker-compose") else None


@pytest.mark.slow  # runs docker compose (or docker-compose) in a subprocess
def test_compose_config_is_valid():
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    r = subprocess.run([*cli, "-f", str(DOCKER / "compose.yaml"), "config", "-q"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
