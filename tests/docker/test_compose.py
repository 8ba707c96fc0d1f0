"""Structural checks of the container and cluster files in docker/ (no Docker needed)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))

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
    assert "ports" not in compose["services"]["ray-worker"]  # so that several workers can run


def test_the_workers_count_is_the_services_own_setting(compose):
    # `run --rm study` sets the workers (a dependency) back to their configured number in compose
    # v2: the count is the service's `scale`, from RAY_WORKERS, never a `--scale` to be undone
    assert compose["services"]["ray-worker"]["scale"] == "${RAY_WORKERS:-2}"
    assert "ray-worker" in compose["services"]["study"]["depends_on"]


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
    assert "--num-cpus=${RAY_HEAD_CPUS:-0}" in head  # the head takes no trials unless asked: they go to the workers
    assert worker.startswith("ray start") and "--address=ray-head:6379" in worker and "--block" in worker
    mlflow = _command(s["mlflow"])
    assert mlflow.startswith("mlflow server") and "postgresql://" in mlflow and "@postgres:5432/mlflow" in mlflow
    assert "--host 0.0.0.0" in mlflow and "--port 5000" in mlflow
    study = _command(s["study"])
    assert "snn-study run" in study
    assert "--address=ray-head:6379" in study and "--tracking-uri=http://mlflow:5000" in study
    # the study prints the host's MLflow address (MLFLOW_UI_URL, read by snn-study), not the containers' own
    assert s["study"]["environment"]["MLFLOW_UI_URL"] == "${MLFLOW_UI_URL:-http://127.0.0.1:5000}"
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
    assert re.search(r"(?m)^ARG TORCH_VARIANT=cpu$", text)  # the CPU-only torch unless asked for CUDA
    assert len(re.findall(r"(?m)^FROM\s", text)) == 1, "one stage: a build leaves no other image behind"
    assert "COPY docker/wheels" not in text  # the wheelhouse comes over HTTP, in no layer


def _dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context (its last matching line wins)."""
    import fnmatch

    ignored = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate, pattern = line.startswith("!"), line.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]  # a folder's pattern covers its files
        if any(fnmatch.fnmatch(p, pattern) or (pattern.startswith("**/") and (
                fnmatch.fnmatch(p, pattern[3:]) or fnmatch.fnmatch(p, pattern))) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_lets_in_only_what_the_images_use():
    dockerfiles = (DOCKER / "Dockerfile").read_text() + (DOCKER / "offline" / "postgres.Dockerfile").read_text()
    for src in re.findall(r"(?m)^COPY\s+(?!--from)(.+)\s+\S+$", dockerfiles):
        for path in src.split():
            assert not _dockerignored(path.rstrip("/")), f"COPY {path}: left out of the context by .dockerignore"
    for path in ("docker/wheels/cuda/torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl", ".venv/bin/python",
                 ".git/HEAD", "studies/x/state.json", "tests/conftest.py", "docs/performance.md",
                 "snn/__pycache__/x.pyc", "study/__pycache__/cli.cpython-311.pyc", "mlflow.db", "data/x.npz"):
        assert _dockerignored(path), f"{path} would be sent in the build context"


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


# -- docker/README.md: its bash blocks are what the stack test runs ---------------------------

def test_readme_blocks_are_found_in_order_and_marked():
    from _readme_blocks import blocks, script

    found = blocks()
    run = [b for b in found if b.run]
    assert len(found) >= 7 and len(run) >= 5
    assert [b.check for b in run if b.check] == ["quickstart", "second", "kept"]
    text = "\n".join(b.text for b in run)
    for needed in ("apt-get install", "dockerd", "COMPOSE=", "debootstrap", "--python-version 3.11",
                   "--only-binary=:all:", "docker build", "STACK=", "run --rm study", "report studies/quickstart",
                   "down"):
        assert needed in text, needed
    # said once: every later command goes through $COMPOSE / $STACK
    assert "COMPOSE=" in run[1].text and "docker compose -f" not in text and "docker-compose -f" not in text
    assert "rm docker/wheels" not in text and "--build " not in text  # no rm of missing files, no offline rebuild
    # the stack is down before the README's last line; the test's own command is not run
    assert run[-1].text.split("#")[0].strip() == "$STACK down"
    assert not any("pytest" in b.text for b in run)
    body = script(found, "HOOK")
    assert body.startswith("set -euo pipefail\n") and body.count("HOOK ") == 3


def test_readme_blocks_are_valid_bash(tmp_path):
    from _readme_blocks import blocks, script

    for b in blocks():
        f = tmp_path / f"block-{b.line}.sh"
        f.write_text(b.text)
        r = subprocess.run(["bash", "-n", str(f)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, f"docker/README.md, block at line {b.line}: {r.stderr}"
    whole = tmp_path / "readme.sh"
    whole.write_text(script(blocks(), "true"))
    r = subprocess.run(["bash", "-n", str(whole)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
